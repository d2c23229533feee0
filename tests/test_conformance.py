"""polyak.SGD against keras.optimizers.SGD (numpy backend), step by step, over a grid.

Each scenario runs on NumPy arrays, on torch tensors (``nn.Parameter`` objects updated
in place) and on JAX arrays through ``jax.jit(opt.stateless_apply)``, against one
Keras run. float32 runs must agree to rtol 1e-6 (on NumPy they are bit-identical
unless clipping by norm: see ``test_float32_is_bit_identical_unless_clipping_by_norm``). For float64 weights Keras's numpy and JAX
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


DIMENSIONS = [MOMENTUM, CLIPPING, DECAY, EMA, ACCUMULATION, LOSS_SCALE, [0, 3]]


def _scenario(choice):
    m, c, (d, exclude), e, a, ls, none_every = (dim[k] for dim, k in zip(DIMENSIONS, choice))
    options = {"learning_rate": 0.05, **m, **c, **(d or {}), **e, **a, **ls}
    return Scenario(options=options, exclude=exclude, none_gradient_every=none_every)


CHOICES = list(itertools.product(*(range(len(dim)) for dim in DIMENSIONS)))
GRID = [_scenario(choice) for choice in CHOICES]


def _pairwise_cover(choices):
    """A few rows of ``choices`` in which every pair of option values (of two dimensions)
    appears at least once: greedy, deterministic."""
    def pairs(choice):
        return {(i, choice[i], j, choice[j]) for i, j in itertools.combinations(range(len(choice)), 2)}

    uncovered = set().union(*(pairs(c) for c in choices))
    cover = []
    while uncovered:
        best = max(choices, key=lambda c: len(pairs(c) & uncovered))
        cover.append(best)
        uncovered -= pairs(best)
    return cover


#: JAX compiles one program per configuration (about a second each on a CPU), so under
#: ``jax.jit`` the grid runs on a pairwise cover: every pair of option values is met.
JAX_GRID = [_scenario(choice) for choice in _pairwise_cover(CHOICES)]


@pytest.fixture(autouse=True)
def _quiet_missing_gradient_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        yield


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk", range(8))
def test_grid_matches_keras(backend, dtype, chunk):
    """Every combination of options, in 8 chunks per dtype to keep failures readable."""
    for scenario in GRID[chunk::8]:
        assert_same_trajectory(dataclasses.replace(scenario, dtype=dtype),
                               rtol=1e-6 if dtype == "float32" else 2e-6, backend=backend)


@pytest.mark.parametrize("chunk", range(2))
def test_grid_matches_keras_under_jax_jit(chunk):
    """``jax.jit(opt.stateless_apply)`` over a pairwise cover of the grid (float32: JAX's
    float64 needs ``jax_enable_x64``, tested in ``test_jax_x64``)."""
    for scenario in JAX_GRID[chunk::2]:
        assert_same_trajectory(scenario, rtol=1e-6, backend="jax")


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


EXTRAS = {
    "momentum": {"momentum": 0.9},
    "all-features": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "global_clipnorm": 1.0, "use_ema": True},
    "accumulation": {"gradient_accumulation_steps": 2, "use_ema": True, "ema_overwrite_frequency": 3},
}
#: Under jax.jit (a compile per configuration) the schedules run with all features and with accumulation.
SCHEDULE_RUNS = [
    pytest.param(schedule, extra, backend, id=f"{schedule[0]}-{extra}-{backend}")
    for schedule in SCHEDULES for extra in EXTRAS for backend in ("numpy", "torch", "jax")
    if not (backend == "jax" and extra == "momentum")
]


@pytest.mark.parametrize("schedule,extra,backend", SCHEDULE_RUNS)
def test_schedules_drive_the_same_trajectory(schedule, extra, backend):
    scenario = Scenario(options=dict(EXTRAS[extra]), schedule=schedule, steps=12, exclude="names")
    exact = backend == "numpy" and "global_clipnorm" not in EXTRAS[extra]
    assert_same_trajectory(scenario, rtol=0 if exact else 1e-6, backend=backend)
