"""polyak.SGD against keras.optimizers.SGD (numpy backend), step by step, over a grid.

Each scenario runs on NumPy arrays, on torch tensors (``nn.Parameter`` objects updated
in place) and on JAX arrays through ``jax.jit(opt.stateless_apply)``, against one
Keras run. On NumPy and torch, float32 runs are bit-identical to Keras (``exact``) unless
they clip by norm, whose norm the fused tier sums in float64 and torch sums in another
order; with gradients whose squares sum exactly in any order, clipping by norm is
bit-identical too. Elsewhere each comparison states the largest difference measured
(a throwaway script running the grid: each backend's run against Keras's, per element,
in units in the last place). For float64 weights Keras's numpy and JAX backends
deliberately compute in float32 (JAX's default promotion), while polyak computes in
float64 as Keras does on TensorFlow; the float64 runs are compared at float32 precision.
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


def _torch_divides_by_a_reciprocal(config, backend):
    """Per-tensor ``clipnorm`` on a step torch's reference tier takes (a missing gradient,
    no accumulation): torch divides by the one-element norm as a multiply by its reciprocal."""
    return (backend == "torch" and bool(config.options.get("clipnorm")) and bool(config.none_gradient_every)
            and not config.options.get("gradient_accumulation_steps"))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunk", range(8))
def test_grid_matches_keras(backend, dtype, chunk):
    """Every combination of options, in 8 chunks per dtype to keep failures readable."""
    for config, scenario in zip(db.GRID[chunk::8], GRID[chunk::8]):
        scenario = dataclasses.replace(scenario, dtype=dtype)
        if dtype == "float64":
            # Keras computes in float32: largest measured 7.0e-7 absolute (both backends)
            assert_same_trajectory(scenario, rtol=2e-6, backend=backend)
        elif not config.clips_by_norm:
            assert_same_trajectory(scenario, exact=True, backend=backend)  # all 432, on both backends
        else:
            # largest measured: 106496 ulps (an element near 0), 1.8e-7 absolute, clipnorm with momentum,
            # on both backends; 122 of 432 differ on NumPy, 128 on torch
            assert_same_trajectory(scenario, rtol=1e-6, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("chunk", range(4))
def test_clipping_by_norm_is_bit_identical_when_the_norm_is_exact(backend, chunk):
    """Gradients that are multiples of 3/8 square and sum exactly in any order and dtype (and
    average exactly over 3 accumulated steps): every grid configuration that clips by norm is
    then bit-identical, so only the order of a sum separates it from Keras."""
    for config in [c for c in db.GRID if c.clips_by_norm][chunk::4]:
        scenario = scenario_of(config, gradients="exact-squares")
        if _torch_divides_by_a_reciprocal(config, backend):
            # largest measured: 36 ulps (27 of the 432 configurations differ, 4 to 36 ulps)
            assert_same_trajectory(scenario, rtol=1e-6, ulps=36, backend=backend)
        else:
            assert_same_trajectory(scenario, exact=True, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_reference_tier_matches_keras(backend):
    """The grid's pairwise cover with the fused tier switched off (``test_tiers`` holds the
    fused tier to the reference tier; this holds the reference tier to Keras). On NumPy it
    sums norms as Keras does: bit-identical on all 864 grid configurations (measured)."""
    for config, scenario in zip(db.GRID_PAIRWISE, JAX_GRID):
        if backend == "torch" and config.clips_by_norm:
            # largest measured on the whole grid: 90112 ulps (an element near 0), 1.2e-7 absolute, clipnorm
            assert_same_trajectory(scenario, rtol=1e-6, backend=backend, tier="reference")
        else:
            assert_same_trajectory(scenario, exact=True, backend=backend, tier="reference")


@pytest.mark.parametrize("chunk", range(2))
def test_grid_matches_keras_under_jax_jit(chunk):
    """``jax.jit(opt.stateless_apply)`` over a pairwise cover of the grid (float32: JAX's
    float64 needs ``jax_enable_x64``, tested in ``test_jax_x64``). XLA fuses multiply-adds
    that Keras rounds twice: largest measured 1073 ulps (4.8e-7 absolute) without norm
    clipping, 180936 ulps (an element near 0, 2.4e-7 absolute) with it."""
    for scenario in JAX_GRID[chunk::2]:
        assert_same_trajectory(scenario, rtol=1e-6, backend="jax")


def test_float32_is_bit_identical_unless_clipping_by_norm():
    """The fused NumPy kernel sums norms in another order than NumPy's pairwise sum; every
    other operation is Keras's, in Keras's order, so those runs are bit-identical."""
    for scenario in GRID[::5]:
        if "clipnorm" not in scenario.options and "global_clipnorm" not in scenario.options:
            assert_same_trajectory(scenario, rtol=0, exact=True)


#: Every schedule under a few feature sets; under jax.jit (a compile per configuration) with all
#: features and with accumulation.
SCHEDULE_RUNS = [
    pytest.param(config, backend, id=f"{config.name}-{backend}")
    for config in db.configs("schedules") for backend in ("numpy", "torch", "jax")
    if not (backend == "jax" and config.name.endswith("-momentum"))
]


@pytest.mark.parametrize("config,backend", SCHEDULE_RUNS)
def test_schedules_drive_the_same_trajectory(config, backend):
    scenario = scenario_of(config, steps=12)
    if backend == "jax":
        # largest measured: 2004 ulps (2.4e-6 absolute) without norm clipping, 3072 with it
        assert_same_trajectory(scenario, rtol=1e-6, backend=backend)
    elif config.clips_by_norm:
        # largest measured: 3072 ulps (2.4e-7 absolute), global_clipnorm, on both backends
        assert_same_trajectory(scenario, rtol=1e-6, backend=backend)
        assert_same_trajectory(scenario_of(config, steps=12, gradients="exact-squares"), exact=True, backend=backend)
    else:
        assert_same_trajectory(scenario, exact=True, backend=backend)
