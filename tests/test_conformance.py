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
import warnings

import pytest

import optimizer_db as db
from reference import assert_same_trajectory
from reference import scenario as scenario_of

#: Keras's option grid (every combination), and a pairwise cover of it for jax.jit, which
#: compiles one program per configuration (about a second each on a CPU).
GRID = [scenario_of(config) for config in db.GRID]
JAX_GRID = [scenario_of(config) for config in db.GRID_PAIRWISE]


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


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_reference_tier_matches_keras(backend):
    """The grid's pairwise cover with the fused tier switched off (``test_tiers`` holds the
    fused tier to the reference tier; this holds the reference tier to Keras)."""
    for scenario in JAX_GRID:
        assert_same_trajectory(scenario, rtol=1e-6, backend=backend, tier="reference")


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


#: Every schedule under a few feature sets; under jax.jit (a compile per configuration) with all
#: features and with accumulation.
SCHEDULE_RUNS = [
    pytest.param(config, backend, id=f"{config.name}-{backend}")
    for config in db.configs("schedules") for backend in ("numpy", "torch", "jax")
    if not (backend == "jax" and config.name.endswith("-momentum"))
]


@pytest.mark.parametrize("config,backend", SCHEDULE_RUNS)
def test_schedules_drive_the_same_trajectory(config, backend):
    exact = backend == "numpy" and not config.clips_by_norm
    assert_same_trajectory(scenario_of(config, steps=12), rtol=0 if exact else 1e-6, backend=backend)
