"""polyak.SGD against keras.optimizers.SGD (numpy backend), step by step, over a grid.

float32 runs must agree to rtol 1e-6 (in practice they are bit-identical: see
``test_float32_is_bit_identical``). For float64 weights Keras's numpy and JAX
backends deliberately compute in float32 (JAX's default promotion), while
polyak computes in float64 as Keras does on TensorFlow; the float64 runs are
compared at float32 precision.
"""

import dataclasses
import itertools
import warnings

import pytest

from reference import Scenario, assert_same_trajectory

MOMENTUM = [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}]
CLIPPING = [{}, {"clipnorm": 1.0}, {"clipvalue": 0.5}, {"global_clipnorm": 2.0}]
DECAY = [(None, None), ({"weight_decay": 0.05}, "names"), ({"weight_decay": 0.05}, "list")]
EMA = [{}, {"use_ema": True}, {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 2}]
ACCUMULATION = [{}, {"gradient_accumulation_steps": 3}]
LOSS_SCALE = [{}, {"loss_scale_factor": 64.0}]


def _grid():
    for m, c, (d, exclude), e, a, ls, none_every in itertools.product(
        MOMENTUM, CLIPPING, DECAY, EMA, ACCUMULATION, LOSS_SCALE, [0, 3]
    ):
        options = {"learning_rate": 0.05, **m, **c, **(d or {}), **e, **a, **ls}
        yield Scenario(options=options, exclude=exclude, none_gradient_every=none_every)


GRID = list(_grid())


@pytest.fixture(autouse=True)
def _quiet_missing_gradient_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        yield


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk", range(8))
def test_grid_matches_keras(dtype, chunk):
    """Every combination of options, in 8 chunks per dtype to keep failures readable."""
    for scenario in GRID[chunk::8]:
        assert_same_trajectory(dataclasses.replace(scenario, dtype=dtype), rtol=1e-6 if dtype == "float32" else 2e-6)


def test_float32_is_bit_identical_unless_clipping_by_norm():
    """The fused NumPy kernel sums norms in another order than NumPy's pairwise sum; every
    other operation is Keras's, in Keras's order, so those runs are bit-identical."""
    for scenario in GRID[::5]:
        if "clipnorm" not in scenario.options and "global_clipnorm" not in scenario.options:
            assert_same_trajectory(scenario, rtol=0)


SCHEDULES = [
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.5}),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "decay_rate": 0.5, "staircase": True}),
    ("PiecewiseConstantDecay", {"boundaries": [2, 5], "values": [0.1, 0.05, 0.01]}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 5, "power": 2.0}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 3, "cycle": True}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 2, "decay_rate": 0.5, "staircase": True}),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 6, "alpha": 0.1}),
    ("CosineDecay", {"initial_learning_rate": 0.0, "decay_steps": 6, "warmup_target": 0.2, "warmup_steps": 3}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 2}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 2, "t_mul": 1.0, "m_mul": 0.5}),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s[0])
@pytest.mark.parametrize("extra", [
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "global_clipnorm": 1.0, "use_ema": True},
    {"gradient_accumulation_steps": 2, "use_ema": True, "ema_overwrite_frequency": 3},
], ids=["momentum", "all-features", "accumulation"])
def test_schedules_drive_the_same_trajectory(schedule, extra):
    scenario = Scenario(options=dict(extra), schedule=schedule, steps=12, exclude="names")
    assert_same_trajectory(scenario, rtol=1e-6 if "global_clipnorm" in extra else 0)
