"""On CUDA the reference step and the fused tiers round as NumPy does: an audit of every aten
operation of a step, on ``meta`` tensors (which take CUDA's code paths in polyak: see
``test_device_sync``), over the test database's configurations.

Three facts of CUDA PyTorch make some operations round differently from NumPy, or stall:

* **division by a host number**: ``t / b`` with ``b`` a Python number or a CPU 0-d tensor
  is computed as ``t * (1 / b)`` (``BinaryDivTrueKernel.cu``), up to 1 ulp from ``t / b``;
  a division by a 0-d tensor on ``t``'s device is true division, and so is ``reciprocal``
  (``1 / t``, rounded once). ``_foreach_div`` by a number divides (``std::divides`` in
  ``ForeachBinaryOpScalar.cu``), so it is allowed; by a CPU tensor it is not.
* **fused multiply-adds**: one kernel computing ``a * b + c`` (``addcmul``, ``lerp``,
  ``add`` with ``alpha`` other than +-1, ...) may be contracted into an FMA by nvcc, rounding
  once where NumPy rounds twice. ``alpha`` of +-1 multiplies exactly, so it is allowed.
* **reading back**: ``_local_scalar_dense`` (``.item()``, ``bool(t)``) or a copy of a device
  tensor to the CPU synchronises the host with the stream; so does a copy from (pageable) CPU
  memory to the device, so a number goes over as ``torch.full`` (a kernel argument) instead. And an elementwise operation
  between a device tensor and a CPU tensor that is not 0-d fails on CUDA.

Each finding names the operation and the configuration.
"""

from __future__ import annotations

import numbers
import warnings

import pytest

import optimizer_db as db
import polyak

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

DIVISIONS = frozenset({"div", "div_", "_foreach_div", "_foreach_div_"})
#: operations computing ``a * b + c`` in one kernel (an FMA once nvcc contracts it)
FMA_PRONE = frozenset({
    "addcmul", "addcmul_", "addcdiv", "addcdiv_", "lerp", "lerp_", "baddbmm", "baddbmm_", "addbmm", "addbmm_",
    "addmm", "addmm_", "addmv", "addmv_", "addr", "addr_", "_addmm_activation",
    "_foreach_addcmul", "_foreach_addcmul_", "_foreach_addcdiv", "_foreach_addcdiv_", "_foreach_lerp",
    "_foreach_lerp_", "_fused_sgd_", "_fused_sgd", "_fused_adam_", "_fused_adamw_",
})
#: operations taking ``alpha``: ``a + alpha * b``, exact only for ``alpha`` of +-1
WITH_ALPHA = frozenset({"add", "add_", "sub", "sub_", "rsub", "_foreach_add", "_foreach_add_", "_foreach_sub",
                        "_foreach_sub_"})
#: operations returning a value on the host
READS_BACK = frozenset({"_local_scalar_dense", "item", "equal", "is_nonzero", "allclose"})


def _tensors(value):
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def _on_device(value):
    return [t for t in _tensors(value) if t.device.type != "cpu"]


def _is_host_number(value):
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _is_cpu_tensor(value):
    return isinstance(value, torch.Tensor) and value.device.type == "cpu"


def problems_of(func, args, kwargs, out):
    """What is wrong with one operation on CUDA (empty when nothing is)."""
    name = func.overloadpacket.__name__
    found = []
    if name in DIVISIONS and _on_device(args[:1]) and len(args) > 1:
        divisor = args[1]
        if _is_cpu_tensor(divisor) or (_is_host_number(divisor) and not name.startswith("_foreach")):
            what = "a CPU tensor" if _is_cpu_tensor(divisor) else f"the Python number {divisor!r}"
            found.append(f"(a) division of a device tensor by {what}: a multiplication by its reciprocal on CUDA")
    if name in FMA_PRONE:
        found.append("(b) a multiply-add in one kernel: an FMA on CUDA")
    alpha = kwargs.get("alpha", 1)
    if name in WITH_ALPHA and not (isinstance(alpha, numbers.Number) and abs(alpha) == 1):
        found.append(f"(b) alpha={alpha!r}: a multiply-add in one kernel, an FMA on CUDA")
    device_inputs = _on_device((args, kwargs))
    if name in READS_BACK or (device_inputs and not _tensors(out) and _is_host_number(out)):
        found.append("(c) a value read back to the host: a synchronisation on CUDA")
    to_cpu = (name == "_to_copy" and str(kwargs.get("device")) == "cpu") or (
        name == "copy_" and _is_cpu_tensor(args[0]) and _on_device(args[1:2]))
    if device_inputs and (to_cpu or any(_is_cpu_tensor(t) for t in _tensors(out))):
        found.append("(c) a copy of a device tensor to the CPU: a synchronisation on CUDA")
    from_cpu = (name == "_to_copy" and _is_cpu_tensor(args[0]) and kwargs.get("device") is not None
                and torch.device(kwargs["device"]).type != "cpu") or (
        name == "copy_" and _on_device(args[:1]) and _is_cpu_tensor(args[1]))
    if from_cpu:
        found.append("(c) a copy from the CPU to the device: from pageable memory, a synchronisation on CUDA")
    if device_inputs and any(_is_cpu_tensor(t) and t.dim() > 0 for t in _tensors((args, kwargs))):
        found.append("(c) a device tensor with a CPU tensor of more than 0 dimensions: fails on CUDA")
    return found


class Audit(TorchDispatchMode):
    """Records every aten operation dispatched, and what :func:`problems_of` finds in each."""

    def __init__(self):
        super().__init__()
        self.names = []
        self.findings = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.names.append(str(func))
        before = problems_of(func, args, kwargs, None)  # recorded even when a meta tensor cannot be read
        self.findings += [f"{func}: {problem}" for problem in before]
        out = func(*args, **kwargs)
        self.findings += [f"{func}: {p}" for p in problems_of(func, args, kwargs, out) if p not in before]
        return out


# --- the configurations ----------------------------------------------------------------------
STEPS = 7  #: every kind of call of the database's configurations (accumulation of 3, overwrite of 4) within
#: configurations beyond the database: a callable rate, param groups of their own rates
EXTRA = [
    db.Config("audit", "callable-rate", dict(learning_rate=lambda: 0.05, momentum=0.9, weight_decay=0.1,
                                              clipnorm=0.5), exclude="names"),
    db.Config("audit", "callable-rate-accumulation", dict(learning_rate=lambda: 0.03, nesterov=True, momentum=0.5,
                                                          gradient_accumulation_steps=2, use_ema=True,
                                                          ema_overwrite_frequency=2)),
]
#: the Keras grid's every pair of option values (the whole grid is 864 configurations)
AUDITED = db.GRID_PAIRWISE + [c for c in db.CONFIGS if c.family != "grid"] + EXTRA


def _dtypes(config):
    if config.family == "16-bit":
        return ("float16", "bfloat16")
    if config.options.get("master_weights"):
        return ("float32", "float16", "bfloat16")
    return ("float32",)


CASES = [(c, d, tier) for c in AUDITED for d in _dtypes(c) for tier in ("reference", "foreach")]


def _meta_weights(config, dtype):
    values = [torch.empty(s, dtype=getattr(torch, dtype), device="meta") for s in db.SHAPES]
    if config.exclude == "names":
        return [polyak.Variable(v, name=n) for v, n in zip(values, db.NAMES)]
    return [torch.nn.Parameter(v) for v in values]


def _meta_gradients(config, weights, step):
    grads = [torch.empty_like(getattr(w, "value", w)) for w in weights]
    k = config.none_gradient_every
    if k and step % k == 1:
        grads[1] = None
    return grads


def audit(config, dtype, tier, steps=STEPS):
    """The findings over ``steps`` steps of ``config`` on ``tier`` (the first builds the state
    outside the audit), and the tiers that ran."""
    weights = _meta_weights(config, dtype)
    opt = config.optimizer(polyak, weights)
    opt.fused = tier != "reference"
    findings, ran = [], set()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        opt.build(weights)
        for step in range(steps):
            with Audit() as seen:
                opt.apply(_meta_gradients(config, weights, step), weights)
            findings += [f"step {step}: {f}" for f in seen.findings]
            ran.add(opt._last_tier)
    return findings, ran


@pytest.mark.parametrize("config,dtype,tier", CASES, ids=[f"{c.id}-{d}-{t}" for c, d, t in CASES])
def test_a_step_on_the_device_rounds_as_numpy_and_reads_nothing_back(config, dtype, tier, monkeypatch):
    if tier == "foreach":
        monkeypatch.setenv("POLYAK_TIER", "foreach")
    findings, ran = audit(config, dtype, tier)
    if tier == "reference":
        assert ran == {"reference"}
    assert not findings, f"{config.id} ({dtype}, {tier} tier, tiers that ran: {sorted(ran)}):\n" + "\n".join(
        dict.fromkeys(findings))


def test_the_foreach_tier_runs_where_it_can():
    """The foreach cases audit the foreach tier, not only the reference it may fall back to."""
    _, ran = audit(db.config("features:all"), "float32", "foreach")
    assert ran == {"foreach"}


@pytest.mark.parametrize("schedule", db.SCHEDULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(db.SCHEDULES)])
def test_a_schedule_of_a_device_count_divides_on_the_device(schedule):
    """Where the count is not known on the host (``stateless_apply``, a direct call), a schedule
    runs on the device count: its constants are made there, and it divides by them."""
    name, kwargs = schedule
    step = torch.full((), 4, dtype=torch.int64, device="meta")
    with Audit() as seen:
        rate = getattr(polyak.optimizers.schedules, name)(**kwargs)(step)
    assert rate.device == step.device and rate.dtype == torch.float32
    assert not seen.findings, f"{name}({kwargs}):\n" + "\n".join(dict.fromkeys(seen.findings))


# --- polyak.torch.SGD: param groups, each with its own rate ------------------------------------
def _torch_face(rates, **options):
    from polyak.torch import SGD

    weights = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in db.SHAPES]
    groups = [dict(params=[w], lr=r, momentum=0.9) for w, r in zip(weights, rates)]
    opt = SGD(groups, **options)
    for w in weights:
        w.grad = torch.empty_like(w)
    return opt


TORCH_FACE = {
    "one-rate": ([0.1, 0.1, 0.1], dict(use_ema=True, global_clipnorm=1.0)),
    "group-rates": ([0.1, 0.05, 0.01], dict(gradient_accumulation_steps=2, clipnorm=1.0)),
    "group-schedules": ([polyak.optimizers.schedules.CosineDecay(0.1, 5),
                         polyak.optimizers.schedules.ExponentialDecay(0.1, 3, 0.5), lambda: 0.02], {}),
}


@pytest.mark.parametrize("name", sorted(TORCH_FACE))
def test_the_torch_face_rounds_as_numpy_on_the_device(name):
    rates, options = TORCH_FACE[name]
    opt = _torch_face(rates, **options)
    opt.step()  # builds the state
    for step in range(4):
        with Audit() as seen:
            opt.step()
        assert not seen.findings, f"polyak.torch.SGD {name}, step {step}:\n" + "\n".join(dict.fromkeys(seen.findings))


# --- the audit itself --------------------------------------------------------------------------
@pytest.mark.parametrize("operation,finding", [
    (lambda x: x / 3.0, "(a)"),
    (lambda x: x / torch.tensor(3.0), "(a)"),
    (lambda x: torch.addcmul(x, x, x, value=0.5), "(b)"),
    (lambda x: x.add(x, alpha=0.5), "(b)"),
    (lambda x: torch._foreach_lerp([x], [x], 0.5), "(b)"),
    (lambda x: x.sum().item(), "(c)"),
    (lambda x: x.cpu(), "(c)"),
    (lambda x: x + torch.ones(3), "(c)"),
], ids=["div-number", "div-cpu-scalar", "addcmul", "alpha", "foreach-lerp", "item", "cpu", "cpu-operand"])
def test_the_audit_finds_what_it_looks_for(operation, finding):
    x = torch.empty(3, device="meta")
    with Audit() as seen:
        try:
            operation(x)
        except (RuntimeError, NotImplementedError):  # meta tensors hold no value to read
            pass
    assert any(finding in f for f in seen.findings), seen.findings


def test_the_audit_allows_what_rounds_as_numpy():
    x = torch.empty(3, device="meta")
    with Audit() as seen:
        x / torch.full((), 3.0, device="meta")
        torch.reciprocal(x) * 2.0
        torch._foreach_div([x], 3.0)
        x.sub(x, alpha=1)
        torch.ops.aten._foreach_add.Tensor([x], torch.full((), 1.0, device="meta"), alpha=-1)
    assert seen.findings == []
