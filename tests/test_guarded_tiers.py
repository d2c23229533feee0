"""Guarded steps on the fused tiers (``polyak.tiers.guards``): ``skip_nonfinite`` and a
``LossScaleOptimizer`` run on the CPU, foreach and Triton (interpreted) tiers with the
reference's numbers, bad steps moving nothing, and on the Triton tier a flag that stays on
the device when the plan needs no count."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported (see test_triton_tier)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import optimizer_db as db  # noqa: E402
import polyak  # noqa: E402

torch = pytest.importorskip("torch")
#: Triton's interpreter computes the flag's ``inf * 0`` in NumPy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")

#: a tensor longer than a Triton block, so the flag gates several programs of one tensor
SHAPES = [(3, 5), (1100,), (7,)]
#: step -> (tensor, element, value): a NaN, an inf, a -inf, and on step 5 a huge but finite value
BAD = {1: (0, 0, np.nan), 3: (1, 1099, np.inf), 4: (2, 3, -np.inf)}
HUGE = (5, (1, 7, np.finfo(np.float32).max))

SKIPPING = {
    "momentum": dict(momentum=0.9),
    "nesterov-decay-clipvalue": dict(momentum=0.9, nesterov=True, weight_decay=0.1, clipvalue=0.5),
    "ema-accumulation": dict(momentum=0.5, use_ema=True, gradient_accumulation_steps=2, ema_overwrite_frequency=2),
    "schedule": dict(momentum=0.9, learning_rate=polyak.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)),
}
#: (tier, backend): the tier ``POLYAK_TIER`` asks for (None: the default pick)
TIERS = [("cpu_fused", "numpy", None), ("cpu_fused", "torch", None), ("foreach", "torch", "foreach"),
         ("triton", "torch", "triton")]


def _make(kind, options):
    if kind == "skip":
        return polyak.SGD(**{"learning_rate": 0.05, **options}, skip_nonfinite=True)
    return polyak.LossScaleOptimizer(polyak.SGD(**{"learning_rate": 0.05, **options}), initial_scale=4.0,
                                     dynamic_growth_steps=2)


def _run(kind, options, backend, dtype, fused, steps=7):
    rng = np.random.default_rng(0)
    initial = [rng.normal(size=s).astype(dtype) for s in SHAPES]
    weights = [torch.nn.Parameter(torch.from_numpy(w)) for w in initial] if backend == "torch" else initial
    opt = _make(kind, options)
    getattr(opt, "inner_optimizer", opt).fused = fused
    ran, host_known = [], []
    for step in range(steps):
        grads = [rng.normal(scale=2.0, size=s).astype(dtype) for s in SHAPES]
        for t, i, value in [BAD[step]] if step in BAD else [HUGE[1]] if step == HUGE[0] else []:
            grads[t].flat[i] = value
        opt.apply([torch.from_numpy(g) for g in grads] if backend == "torch" else grads, weights)
        ran.append(opt._last_tier)
        host_known.append(getattr(opt, "inner_optimizer", opt)._iterations.known_host is not None)
    return db.state(opt, weights), ran, host_known


@pytest.mark.parametrize("kind", ["skip", "loss-scale"])
@pytest.mark.parametrize("name", sorted(SKIPPING))
@pytest.mark.parametrize("tier,backend,forced", TIERS, ids=[f"{t}-{b}" for t, b, _ in TIERS])
def test_a_guarded_step_on_a_fused_tier_equals_the_reference(tier, backend, forced, name, kind, monkeypatch):
    if forced:
        monkeypatch.setenv("POLYAK_TIER", forced)
    dtype = np.float64 if name == "momentum" and tier != "cpu_fused" else np.float32
    got, ran, host_known = _run(kind, SKIPPING[name], backend, dtype, fused=True)
    assert set(ran) == {tier}
    want, reference_ran, _ = _run(kind, SKIPPING[name], backend, dtype, fused=False)
    assert set(reference_ran) == {"reference"}
    db.assert_same_numbers([want], [got])
    if tier == "triton":  # the flag stays on the device unless the plan decides on the count
        needs_count = name in ("ema-accumulation", "schedule")
        assert all(host_known) == needs_count


def test_bad_steps_move_nothing_and_are_counted(monkeypatch):
    monkeypatch.setenv("POLYAK_TIER", "triton")
    weights = [torch.nn.Parameter(torch.ones(1100)), torch.nn.Parameter(torch.ones(3))]
    opt = polyak.SGD(learning_rate=0.5, momentum=0.9, skip_nonfinite=True)
    good = [torch.full((1100,), 0.5), torch.full((3,), 0.25)]
    opt.apply(good, weights)
    before = [w.detach().clone() for w in weights] + [v.value.clone() for v in opt.variables]
    for poison in (np.nan, np.inf, -np.inf):
        bad = [g.clone() for g in good]
        bad[0][1099] = poison
        opt.apply(bad, weights)
        assert opt._last_tier == "triton"
    after = [w.detach() for w in weights] + [v.value for v in opt.variables]
    names = [v.name for v in opt.variables]
    for name, a, b in zip(["w0", "w1"] + names, before, after):
        if name != "skipped_steps":
            assert torch.equal(a, b), name
    assert int(opt.skipped_steps.numpy()) == 3 and opt.iterations.host == 1


def test_the_loss_scale_is_updated_on_the_fused_tier_as_keras_has_it():
    weights = [np.ones(5, np.float32)]
    opt = polyak.LossScaleOptimizer(polyak.SGD(learning_rate=0.1), initial_scale=8.0, dynamic_growth_steps=2)
    scales = []
    for g in [1.0, 1.0, np.inf, 1.0, np.nan, 1.0, 1.0]:
        opt.apply([np.full(5, g, np.float32)], weights)
        scales.append(float(opt.dynamic_scale.numpy()))
        assert opt._last_tier == "cpu_fused"
    assert scales == [8.0, 16.0, 8.0, 8.0, 4.0, 4.0, 8.0]
    assert int(opt.iterations.numpy()) == 5


def test_sixteen_bit_gradients_divided_by_a_loss_scale_take_the_reference(monkeypatch):
    monkeypatch.setenv("POLYAK_TIER", "triton")
    weights = [torch.nn.Parameter(torch.ones(4, dtype=torch.float16))]
    opt = polyak.LossScaleOptimizer(polyak.SGD(learning_rate=0.1, momentum=0.9))
    opt.apply([torch.ones(4, dtype=torch.float16)], weights)
    assert opt._last_tier == "reference"


def test_the_guarded_steps_benchmark_runs_on_the_fused_tier():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "guarded_steps.py"), "--workloads", "W2",
                           "--kinds", "numpy", "--repeats", "1"], capture_output=True, text=True, timeout=300,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(" cpu_fused " in line for line in lines), done.stdout
