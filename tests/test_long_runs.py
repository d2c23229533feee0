"""Long runs: an int64 counter past 2**31, schedules right at large steps, memory that stays flat."""

import gc
import os
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")
import keras  # noqa: E402

import polyak  # noqa: E402
from polyak import schedules  # noqa: E402

BIG_STEPS = [2**31 - 1, 2**31, 2**31 + 1, 2**32 + 7, 3 * 2**31, 2**40, 2**53 + 2]
SCHEDULES = [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=2**30, decay_rate=0.5)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=2**30, decay_rate=0.5, staircase=True)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=2**32, power=2.0)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=2**31, cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=2**31, decay_rate=0.5)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=2**32, alpha=0.1)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=2**32, warmup_target=0.2, warmup_steps=2**31)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=2**30, t_mul=1.0)),
]


def test_the_counter_passes_2_31_exactly():
    w = np.zeros(2, np.float32)
    opt = polyak.SGD(learning_rate=1.0, momentum=0.5, gradient_accumulation_steps=2, skip_nonfinite=True)
    opt.build([w])
    opt._iterations.assign(2**31 - 2)
    for _ in range(4):
        opt.apply([np.ones(2, np.float32)], [w])
    assert opt._iterations.dtype == "int64" and int(opt._iterations.numpy()) == 2**31 + 2
    assert int(opt.iterations) == (2**31 + 2) // 2
    opt._iterations.assign(2**62)
    opt.apply([np.ones(2, np.float32)], [w])
    assert int(opt._iterations.numpy()) == 2**62 + 1 and int(opt.iterations) == (2**62 + 1) // 2


def test_a_schedule_boundary_past_2_31_is_hit_on_the_exact_step():
    w = np.zeros(1, np.float64)
    boundary = 2**31 + 1
    schedule = schedules.PiecewiseConstantDecay([boundary], [1.0, 0.5])
    opt = polyak.SGD(learning_rate=schedule)
    opt.build([w])
    opt._iterations.assign(2**31)
    trajectory = []
    for _ in range(3):  # the rate at raw steps 2**31, 2**31 + 1 (<= boundary), 2**31 + 2
        opt.apply([np.ones(1)], [w])
        trajectory.append(float(w[0]))
    assert trajectory == [-1.0, -2.0, -2.5]


def test_a_checkpoint_keeps_a_huge_counter(tmp_path):
    opt = polyak.SGD(momentum=0.9, skip_nonfinite=True)
    opt.build([np.zeros(2, np.float32)])
    opt._iterations.assign(2**53 + 1)  # not representable in float64: must stay an integer
    opt.skipped_steps.assign(2**40 + 3)
    polyak.save(tmp_path / "run.ckpt", opt)
    restored = polyak.load(tmp_path / "run.ckpt", variables=[np.zeros(2, np.float32)])
    assert int(restored._iterations.numpy()) == 2**53 + 1 and int(restored.skipped_steps.numpy()) == 2**40 + 3


@pytest.mark.parametrize("name,kwargs", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules_at_large_steps_match_keras_and_stay_finite(name, kwargs):
    ours = getattr(schedules, name)(**kwargs)
    theirs = getattr(keras.optimizers.schedules, name)(**kwargs)
    for step in BIG_STEPS:
        got, want = ours(np.int64(step)), theirs(np.int64(step))
        assert np.asarray(got).dtype == np.float32 and np.isfinite(got), (step, got)
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")


def test_schedules_at_large_steps_are_right():
    """Against the formulas in float64 at steps float32 holds exactly. PiecewiseConstantDecay
    compares int64 steps with int64 boundaries (Keras works in int32: it refuses a boundary of
    2**31 and, given the step 2**31, answers the first interval's value)."""
    step = np.int64(3 * 2**31)
    assert float(schedules.ExponentialDecay(0.1, 2**31, 0.5)(step)) == pytest.approx(0.1 * 0.5**3, rel=1e-6)
    assert float(schedules.InverseTimeDecay(0.1, 2**31, 0.5)(step)) == pytest.approx(0.1 / 2.5, rel=1e-6)
    assert float(schedules.PolynomialDecay(0.1, 2**33)(step)) == pytest.approx(
        (0.1 - 1e-4) * (1 - 3 / 4) + 1e-4, rel=1e-6)
    assert float(schedules.CosineDecay(0.1, 2**32, alpha=0.1)(step)) == pytest.approx(0.01, rel=1e-6)
    assert float(schedules.PiecewiseConstantDecay([3 * 2**31 - 1], [0.1, 0.2])(step)) == np.float32(0.2)
    assert float(schedules.PiecewiseConstantDecay([3 * 2**31], [0.1, 0.2])(step)) == np.float32(0.1)
    assert float(schedules.PiecewiseConstantDecay([2**31, 2**40], [0.1, 0.2, 0.3])(np.int64(2**40 + 1))) \
        == np.float32(0.3)


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_memory_stays_flat_over_100_000_steps():
    """Through the whole ``apply`` path, on the smallest model (the cost is per call, ~0.1 ms).
    A leak of 8 bytes a step would show as 0.7 MB here."""
    weights, grads = [np.zeros(4, np.float32)], [np.full(4, 1e-3, np.float32)]
    opt = polyak.SGD(learning_rate=0.01, momentum=0.9, skip_nonfinite=True)
    opt.build(weights)
    for _ in range(10_000):
        opt.apply(grads)
    gc.collect()
    start = _resident_bytes()
    for _ in range(90_000):
        opt.apply(grads)
    gc.collect()
    growth = _resident_bytes() - start
    assert int(opt._iterations.numpy()) == 100_000
    assert growth < 512 * 1024, f"resident memory grew by {growth} bytes over 90,000 steps"
