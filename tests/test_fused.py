"""The fused tier's own behaviour: flat state buffers, calls it declines, the address reader.

That it equals the reference tier on every state entry over several steps, over the
fused kernel's option grid, is ``test_tiers`` (driven by ``optimizer_db``).
"""

import warnings

import numpy as np
import pytest

import optimizer_db as db
import polyak
from polyak.tiers import cpu_fused

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="numba is not installed")


def test_state_variables_are_views_of_flat_buffers_after_the_first_step():
    w = [np.ones((2, 2), np.float32), np.ones(3, np.float32)]
    opt = polyak.SGD(momentum=0.9)
    opt.apply([np.ones((2, 2), np.float32), np.ones(3, np.float32)], w)
    momentum = opt.momentums[1]
    assert momentum.value.base is opt._tier_cache.buffers["momentum"]
    opt.set_weights([np.int64(0), np.float32(0.1), np.zeros((2, 2)), np.full(3, 5.0)])
    np.testing.assert_array_equal(opt._tier_cache.buffers["momentum"][4:], 5.0)


@pytest.mark.parametrize("case", ["non-contiguous gradient", "float64 gradient", "None gradient",
                                  "constraint set after build", "subset of weights"])
def test_ineligible_calls_fall_back_and_agree(case):
    def run(fused):
        rng = np.random.default_rng(3)
        a = polyak.Variable(rng.normal(size=(4, 4)).astype(np.float32), name="a")
        b = polyak.Variable(rng.normal(size=4).astype(np.float32), name="b")
        opt = polyak.SGD(momentum=0.9, use_ema=True)
        opt.build([a, b])
        db.use_tier(opt, "cpu_fused" if fused else "reference")
        for step in range(4):
            ga, gb = rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
            if step == 2:
                if case == "non-contiguous gradient":
                    ga = np.asfortranarray(ga)
                elif case == "float64 gradient":
                    ga = ga.astype(np.float64)
                elif case == "None gradient":
                    ga = None
                elif case == "constraint set after build":
                    a.constraint = lambda w: np.clip(w, -0.5, 0.5)
                elif case == "subset of weights":
                    opt.apply([gb], [b])
                    continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.apply([ga, gb], [a, b])
        return [a.numpy(), b.numpy()] + [v.numpy() for v in opt.variables]

    for got, want in zip(run(True), run(False)):
        np.testing.assert_array_equal(got, want)


def test_address_reader_over_mixed_dimensionalities():
    from polyak.tiers.cpu_kernels import AddressReader

    rng = np.random.default_rng(0)
    shapes = [[(3,), (2, 5), (2, 3, 4, 1)][i] for i in rng.integers(0, 3, size=41)]
    arrays = [np.zeros(shape, np.float32) for shape in shapes]
    read = AddressReader([len(s) for s in shapes])
    assert list(read(arrays)) == [a.ctypes.data for a in arrays]
    arrays[7] = np.zeros((2 * shapes[7][0],) + shapes[7][1:], np.float32)[::2]  # a strided view
    found = read(arrays)
    assert found[7] == -1 and (np.delete(found, 7) >= 0).all()


@pytest.mark.parametrize("options", [dict(momentum=0.9), dict(momentum=0.9, weight_decay=0.1)])
def test_the_flat_state_is_prepared_once_and_reused_by_every_step(options):
    w = [np.ones((2, 2), np.float32), np.ones(3, np.float32)]
    opt = polyak.SGD(**options)
    opt.apply([np.ones((2, 2), np.float32), np.ones(3, np.float32)], w)
    prepared = opt._tier_cache
    for _ in range(3):
        opt.apply([np.ones((2, 2), np.float32), np.ones(3, np.float32)], w)
    assert db.tier_that_ran(opt) == "cpu_fused" and opt._tier_cache is prepared


def test_a_tensor_whose_data_is_replaced_is_stepped_in_its_new_storage():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.ones(4))
    opt = polyak.SGD(learning_rate=0.5, momentum=0.9)
    opt.apply([torch.ones(4)], [p])
    old = p.data
    p.data = torch.full((4,), 2.0)  # what module.to(...) and module.half() do to parameters
    opt.apply([torch.ones(4)], [p])
    assert old.tolist() == [0.5] * 4
    assert p.detach().tolist() == pytest.approx([2.0 - 0.45 - 0.5] * 4)
    assert db.tier_that_ran(opt) == "cpu_fused"


@pytest.mark.parametrize("factor", [9.078908374693553e-175, 1e-300])
def test_a_loss_scale_factor_that_rounds_to_zero_divides_as_the_reference_does(factor):
    """A positive ``loss_scale_factor`` below float32's smallest subnormal is 0 in the float32 step:
    the kernel divides by it as NumPy does (inf gradients, as in Keras), it does not raise (hypothesis
    found 9.08e-175)."""
    runs = []
    for fused in (True, False):
        w = np.ones(3, np.float32)
        opt = polyak.SGD(loss_scale_factor=factor)
        opt.fused = fused
        with np.errstate(all="ignore"):
            opt.apply([np.ones(3, np.float32)], [w])
        runs.append((opt._last_tier, w))
    (tier, fused_w), (_, reference_w) = runs
    assert tier == "cpu_fused"
    np.testing.assert_array_equal(fused_w, reference_w)
