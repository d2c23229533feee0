"""The Triton tier without a GPU: its kernel in Triton's interpreter, and its PTX for sm_90.

* Under ``TRITON_INTERPRET=1`` with ``POLYAK_TIER=triton`` the tier takes CPU tensors, so the
  generated kernel runs (in NumPy, per program) on small odd-shaped tensors, one of them
  longer than a block; it must equal the reference tier on every state entry after every
  step, bit for bit, except a norm (clipping by norm), summed in another order. float16
  weights with and without master weights too; not bfloat16, which the interpreter cannot
  compute (it holds it as uint16 and truncates float32 to it): the tier declines it there,
  and its kernels are checked through their PTX (and on a GPU by ``benchmarks/gpu_check.py``).
* Compiled for an H100 (sm_90) without a device (Triton bundles ptxas), the kernels must
  hold no fused multiply-add, no approximate division, no other approximate instruction and
  no flushing of subnormals; a 16-bit kernel rounds to its dtype with ``cvt.rn``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

# Triton decides at import whether its own library functions (``tl.sum``) run in the
# interpreter, so the variable is set before anything imports it; the PTX check runs in a
# process of its own, without it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import optimizer_db as db  # noqa: E402
import polyak  # noqa: E402

triton = pytest.importorskip("triton")
torch = pytest.importorskip("torch")

from polyak.tiers import calls, triton_codegen, triton_fused  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: a tensor longer than a block, so a tensor spans several programs and the last is partial
SHAPES = [(3, 5), (triton_fused.BLOCK + 7,), (2, 1, 3)]

#: 16-bit weights: Keras's 16-bit configurations, master weights (and, with norm clipping, the
#: cases the tier declines: a 16-bit gradient clipped by norm)
HALF = (db.configs("16-bit") + [db.config("features:master-weights"), db.config("features:master-weights-accumulation"),
                                db.KERNEL_GRID[5]]
        + [db.KERNEL_GRID[i].with_options(master_weights=True) for i in (23, 28, 31)])
CASES = ([(c, "float32") for c in db.KERNEL_GRID] + [(c, "float64") for c in db.KERNEL_GRID[1::4]]
         + [(c, "float32") for c in db.configs("features") + db.GRID_PAIRWISE[:4]] + [(c, "float16") for c in HALF])
#: clipping by norm: float32 norms summed in another order; a 16-bit weight rounded from its
#: float32 master may then land one unit in the last place away
TOLERANCE = {**db.NORM_TOLERANCE, "float16": (1e-3, 1e-6)}


def _id(config, dtype):
    return f"{config.id}-{dtype}" + ("-master" if config.options.get("master_weights") else "")


@pytest.fixture
def interpreted(monkeypatch):
    assert triton.knobs.runtime.interpret, "triton was imported before this module set TRITON_INTERPRET=1"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("POLYAK_TIER", "triton")


@pytest.mark.parametrize("config,dtype", CASES, ids=[_id(c, d) for c, d in CASES])
def test_the_interpreted_kernel_equals_the_reference(config, dtype, interpreted, monkeypatch):
    got, opt = db.run_on_tier(config, "torch", dtype, "cpu_fused", shapes=SHAPES)
    assert db.tier_that_ran(opt) == ("triton" if db.fused_takes(config, "torch", dtype, "triton") else "reference")
    monkeypatch.delenv("POLYAK_TIER")
    want, reference = db.run_on_tier(config, "torch", dtype, "reference", shapes=SHAPES)
    assert db.tier_that_ran(reference) == "reference"
    db.assert_same_numbers(want, got, TOLERANCE[dtype] if config.clips_by_norm else (0, 0))


def test_bfloat16_is_declined_in_the_interpreter_and_agrees(interpreted, monkeypatch):
    config = db.config("features:master-weights")
    got, opt = db.run_on_tier(config, "torch", "bfloat16", "cpu_fused", steps=2, shapes=SHAPES)
    assert db.fused_takes(config, "torch", "bfloat16", "triton") and db.tier_that_ran(opt) == "reference"
    monkeypatch.delenv("POLYAK_TIER")
    want, _ = db.run_on_tier(config, "torch", "bfloat16", "reference", steps=2, shapes=SHAPES)
    db.assert_same_numbers(want, got)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_scalars_are_rounded_as_torch_full_rounds_them(dtype):
    """Through float32 (a double rounding): ``1 + 2**-11 + 2**-40`` is 1 in float16, not 1 + 2**-10."""
    cast = calls.DeviceCast(getattr(torch, dtype))
    for value in (1 + 2.0 ** -11 + 2.0 ** -40, 1 + 2.0 ** -8 + 2.0 ** -40, 0.1, 0.99, -3.3e-5, 1e-30, 7e4):
        got = cast(value)
        assert got.dtype == np.float32
        assert got == torch.full((), value, dtype=getattr(torch, dtype)).float().item(), value
    assert cast(1 - cast(0.99)) == torch.full((), 1, dtype=getattr(torch, dtype)) - torch.full(
        (), 0.99, dtype=getattr(torch, dtype))


def test_clipping_by_value_keeps_nan_and_signed_zero_as_the_reference(interpreted, monkeypatch):
    def run():
        w = [torch.nn.Parameter(torch.zeros(6))]
        opt = polyak.SGD(learning_rate=1.0, clipvalue=0.5)
        opt.apply([torch.tensor([np.nan, -0.0, 0.7, -3.0, np.inf, 0.25])], w)
        return opt, w[0].detach().numpy()

    opt, got = run()
    assert db.tier_that_ran(opt) == "triton"
    monkeypatch.delenv("POLYAK_TIER")
    monkeypatch.delenv("TRITON_INTERPRET")
    opt, want = run()
    assert db.tier_that_ran(opt) == "cpu_fused"
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got).tolist() == np.signbit(want).tolist()


def test_without_the_variable_cpu_tensors_do_not_take_the_triton_tier(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("POLYAK_TIER", raising=False)
    w = [torch.nn.Parameter(torch.ones(3))]
    opt = polyak.SGD(momentum=0.9)
    opt.apply([torch.ones(3)], w)
    assert db.tier_that_ran(opt) == "cpu_fused"


def test_the_dialect():
    statement = triton_codegen.statement
    assert statement("x = x / loss_scale", [], ["loss_scale"]) == "x = tl.div_rn(x, loss_scale)"
    assert statement("x = x / loss_scale", [], ["loss_scale"], types=triton_codegen.Types("float64")) == \
        "x = x / loss_scale"
    assert statement("x = clip(x, -clip_value, clip_value)", [], ["clip_value"]) == \
        "x = clip(x, -clip_value, clip_value)"
    assert statement("{momentum} = x", ["momentum"]) == "momentum_ = x"
    assert statement("wv = wv - wv * weight_decay * lr", [], ["weight_decay", "lr"], decayed=True) == \
        "wv = tl.where(decays, wv - ((wv * weight_decay) * lr), wv)"
    assert statement("{gradient_accumulator} = 0", ["gradient_accumulator"]) == \
        "gradient_accumulator_ = tl.full([BLOCK], 0, tl.float32)"
    # 16 bits: computed in float32 and rounded once, the scalar rounded to the block's dtype first
    half, master = triton_codegen.Types("float16"), triton_codegen.Types("bfloat16", masters=True)
    assert statement("wv = wv - x * lr", [], ["lr"], types=half) == \
        "wv = (wv.to(tl.float32) - (x.to(tl.float32) * lr.to(tl.float16).to(tl.float32)).to(tl.float16)" \
        ".to(tl.float32)).to(tl.float16)"
    assert statement("x = clip(x, -clip_value, clip_value)", [], ["clip_value"], types=master) == \
        "x = clip(x, (-clip_value).to(tl.bfloat16), clip_value.to(tl.bfloat16))"
    # a 16-bit gradient meets the float32 accumulator: float32, as torch promotes
    assert statement("x = (x + {gradient_accumulator}) / n_acc", ["gradient_accumulator"], ["n_acc"],
                     types=master) == "x = tl.div_rn((x.to(tl.float32) + gradient_accumulator_), n_acc)"
    # and after the gradient statements, the gradient is cast to the masters' float32 (the rule's cast)
    lines = triton_codegen._Typed([], master, ["lr"]).body([("gradient", "x = x / lr"), ("update", "wv = wv - x * lr")])
    assert lines[1:] == ["x = x.to(tl.float32)", "wv = wv - (x * lr)"]
    for bad in ("if x < 0:\n    x = 0", "x = x ** 2", "x = abs(x)", "x, y = y, x", "x = x * unknown", "x = lr"):
        with pytest.raises(ValueError, match="statement"):
            statement(bad, [], ["lr"])


# --- PTX for sm_90 --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_the_ptx_for_sm90_has_no_contraction_and_no_approximation(dtype):
    """Every kernel the stages can ask for (``tests/triton_ptx.py``), compiled for sm_90."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_ptx.py"), dtype], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["polyak"].startswith(str(ROOT)), report["polyak"]
    assert len(report["kernels"]) >= 6
    for kernel in report["kernels"]:
        assert kernel["stores"], f"{kernel['name']}: stores nothing; it was not compiled as expected"
        assert kernel["forbidden"] == [], kernel["name"]
        if kernel["name"].startswith("update"):  # a full block moves 16 bytes per instruction
            assert kernel["vector_loads"] and kernel["vector_stores"], kernel["name"]
    assert any(kernel["divisions"] for kernel in report["kernels"])
    assert any(kernel["guarded"] for kernel in report["kernels"])  # a guarded step reads its flag
    if dtype in ("float16", "bfloat16"):
        assert {kernel["masters"] for kernel in report["kernels"]} == {False, True}
        rounding = {"float16": "cvt.rn.f16.f32", "bfloat16": "cvt.rn.bf16.f32"}[dtype]
        assert all(rounding in kernel["conversions"] for kernel in report["kernels"]
                   if kernel["name"].startswith("update"))


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("case", ["non-contiguous gradient", "float64 gradient", "None gradient"])
def test_calls_the_kernel_cannot_take_fall_back_and_agree(case, interpreted, monkeypatch):
    def run():
        generator = torch.Generator().manual_seed(3)
        a, b = (torch.nn.Parameter(torch.randn(s, generator=generator)) for s in [(4, 4), (5,)])
        opt = polyak.SGD(momentum=0.9, use_ema=True)
        tiers = []
        for step in range(4):
            ga, gb = torch.randn(4, 4, generator=generator), torch.randn(5, generator=generator)
            if step == 2:
                ga = {"non-contiguous gradient": ga.t(), "float64 gradient": ga.double(), "None gradient": None}[case]
            opt.apply([ga, gb], [a, b])
            tiers.append(db.tier_that_ran(opt))
        return tiers, [a.detach().numpy(), b.detach().numpy()] + [db.to_numpy(v) for v in opt.variables]

    tiers, got = run()
    assert tiers[:2] + tiers[3:] == ["triton"] * 3 and tiers[2] in ("reference", "cpu_fused")
    monkeypatch.delenv("POLYAK_TIER")
    _, want = run()
    for x, y in zip(want, got):
        np.testing.assert_array_equal(y, x)


def test_a_rate_set_between_steps_and_gradients_reused_in_place_reach_the_kernel(interpreted, monkeypatch):
    """The stored rate stays on the device and the gradients' address table is kept while no
    address moves: a new rate, and new values in the same gradient tensors, still take effect."""
    def run():
        generator = torch.Generator().manual_seed(5)
        w = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in [(3, 4), (7,)]]
        grads = [torch.zeros(3, 4), torch.zeros(7)]
        opt = polyak.SGD(learning_rate=0.1, momentum=0.9, global_clipnorm=1.0)
        tiers = []
        for step in range(4):
            for g in grads:
                g.copy_(torch.randn(g.shape, generator=generator))
            opt.learning_rate = 0.1 / (step + 1)
            opt.apply(grads, w)
            tiers.append(db.tier_that_ran(opt))
        return tiers, [x.detach().numpy() for x in w] + [db.to_numpy(v) for v in opt.variables]

    tiers, got = run()
    assert tiers == ["triton"] * 4
    monkeypatch.delenv("POLYAK_TIER")
    _, want = run()
    db.assert_same_numbers([want], [got], db.NORM_TOLERANCE["float32"])


def test_a_weight_whose_storage_is_replaced_is_stepped_where_it_now_lives(interpreted, monkeypatch):
    """``p.data = ...`` gives the same Parameter new memory: the kernel must write there (its
    address table made again, the state kept), not into the memory the weight had."""
    def run():
        generator = torch.Generator().manual_seed(11)
        w = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in [(5, 3), (17,)]]
        opt = polyak.SGD(learning_rate=0.1, momentum=0.9, use_ema=True)
        tiers = []
        for step in range(4):
            if step == 2:
                w[1].data = w[1].data * 2  # new storage, same Parameter
            opt.apply([torch.randn(p.shape, generator=generator) for p in w], w)
            tiers.append(db.tier_that_ran(opt))
        return tiers, [p.detach().numpy().copy() for p in w] + [db.to_numpy(v) for v in opt.variables]

    tiers, got = run()
    assert tiers == ["triton"] * 4
    monkeypatch.delenv("POLYAK_TIER")
    _, want = run()
    for x, y in zip(want, got):
        np.testing.assert_array_equal(y, x)


def test_a_gradient_off_16_byte_alignment_takes_the_kernel_without_alignment_hints(interpreted, monkeypatch):
    """A contiguous view 4 bytes into its storage is a valid gradient, but its blocks cannot be
    loaded as 16-byte vectors: that step's kernel has no alignment hints, and the numbers stay."""
    def run():
        generator = torch.Generator().manual_seed(13)
        w = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in [(triton_fused.BLOCK + 3,), (6,)]]
        opt = polyak.SGD(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
        aligned = []
        for step in range(3):
            grads = [torch.randn(p.shape, generator=generator) for p in w]
            if step == 1:
                grads[0] = torch.randn(grads[0].numel() + 1, generator=generator)[1:]
            opt.apply(grads, w)
            if db.tier_that_ran(opt) == "triton":
                aligned.append(opt._tier_cache.kernel_types().aligned)
        return aligned, [p.detach().numpy().copy() for p in w] + [db.to_numpy(v) for v in opt.variables]

    aligned, got = run()
    assert aligned == [True, False, True]
    monkeypatch.delenv("POLYAK_TIER")
    _, want = run()
    for x, y in zip(want, got):
        np.testing.assert_array_equal(y, x)
