"""Every tier equals the reference tier, on every state entry, after every step.

The cases come from the test database (``optimizer_db.parity_cases``): the fused kernel's
option grid on NumPy and CPU torch, the Keras grid's pairwise cover, polyak's own options,
and inputs the fused tier must decline. Where the fused tier takes the input it must have
run; elsewhere the reference must have. The fused tier promises the reference's numbers
bit for bit, except a norm (clipping by norm), which it sums in another order: within the
ulps measured there (``optimizer_db.NORM_ULPS``: up to 768 in float32).
"""

import pytest

import optimizer_db as db

pytestmark = pytest.mark.skipif(not __import__("polyak.tiers.cpu_fused").tiers.cpu_fused.available(),
                                reason="numba is not installed")



def assert_tiers_agree(config, backend, dtype, steps=7, shapes=db.SHAPES):
    expected_tier = "cpu_fused" if db.fused_takes(config, backend, dtype) else "reference"
    want, reference = db.run_on_tier(config, backend, dtype, "reference", steps, shapes)
    assert db.tier_that_ran(reference) == "reference"
    for tier in db.TIERS[1:]:
        got, opt = db.run_on_tier(config, backend, dtype, tier, steps, shapes)
        assert db.tier_that_ran(opt) == expected_tier, f"{tier} asked; {expected_tier} expected to run"
        assert [v.name for v in opt.variables] == [v.name for v in reference.variables]
        by_norm = config.clips_by_norm and expected_tier != "reference"
        ulps = db.NORM_ULPS[dtype] if by_norm and shapes == db.SHAPES else None
        db.assert_same_numbers(want, got, db.NORM_TOLERANCE[dtype] if by_norm else (0, 0), what=tier, ulps=ulps)


CASES = db.parity_cases()


@pytest.mark.parametrize("config,backend,dtype", CASES, ids=[f"{c.id}-{b}-{d}" for c, b, d in CASES])
def test_every_tier_equals_the_reference_on_every_state_entry(config, backend, dtype):
    pytest.importorskip(backend)
    assert_tiers_agree(config, backend, dtype)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_tensors_larger_than_a_chunk(backend):
    """The fused kernel splits tensors into chunks of ``cpu_fused.CHUNK`` elements."""
    pytest.importorskip(backend)
    config = db.Config("kernel", "large", dict(momentum=0.9, global_clipnorm=1.0, use_ema=True), schedule=db.WARMUP)
    assert_tiers_agree(config, backend, "float32", steps=4, shapes=[(70000,), (3, 5), (4,)])


def test_use_tier_refuses_an_unknown_tier():
    with pytest.raises(ValueError, match="Unknown tier 'triton'"):
        db.use_tier(__import__("polyak").SGD(), "triton")
