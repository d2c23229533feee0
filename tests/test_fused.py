"""The fused NumPy step equals the reference step, on every state entry, over several steps."""

import itertools
import warnings

import numpy as np
import pytest

import polyak
from polyak.tiers import cpu_fused

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="numba is not installed")

OPTIONS = [
    dict(momentum=m, nesterov=n, **clip, **extra)
    for (m, n), clip, extra in itertools.product(
        [(0.0, False), (0.9, False), (0.9, True)],
        [{}, {"clipvalue": 0.1}, {"clipnorm": 0.5}, {"global_clipnorm": 1.0}],
        [{}, {"weight_decay": 0.1, "use_ema": True, "ema_overwrite_frequency": 3},
         {"gradient_accumulation_steps": 3, "use_ema": True, "loss_scale_factor": 16.0}],
    )
]


def _run(options, dtype, fused, steps=7, chunked=False):
    rng = np.random.default_rng(7)
    shapes = [(70000,), (3, 5), (4,)] if chunked else [(3, 5), (4,), (2, 2, 2)]
    weights = [rng.normal(size=s).astype(dtype) for s in shapes]
    opt = polyak.SGD(learning_rate=polyak.schedules.CosineDecay(0.1, 10, warmup_target=0.2, warmup_steps=2),
                     **options)
    opt.build(weights)
    if not fused:
        opt.fused = False
    for _ in range(steps):
        opt.apply([rng.normal(size=s).astype(dtype) for s in shapes], weights)
    assert (opt._last_tier == "cpu_fused") == fused
    return weights, [v.numpy() for v in opt.variables]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_fused_equals_reference(options, dtype):
    by_norm = "clipnorm" in options or "global_clipnorm" in options
    rtol = (1e-6 if dtype == np.float32 else 1e-13) if by_norm else 0
    fast, reference = _run(options, dtype, fused=True), _run(options, dtype, fused=False)
    for got, want in zip(fast[0] + fast[1], reference[0] + reference[1]):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def test_tensors_larger_than_a_chunk():
    options = dict(momentum=0.9, global_clipnorm=1.0, use_ema=True)
    fast, reference = _run(options, np.float32, True, chunked=True), _run(options, np.float32, False, chunked=True)
    for got, want in zip(fast[0] + fast[1], reference[0] + reference[1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


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
        if not fused:
            opt.fused = False
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


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("options", OPTIONS[::3], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_torch_cpu_tensors_take_the_fused_kernel_and_equal_the_reference(options):
    def run(fused):
        gen = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(3, 5), (4,), (70000,)]]
        opt = polyak.SGD(learning_rate=0.05, **options)
        opt.fused = fused
        for _ in range(6):
            opt.apply([torch.randn(p.shape, generator=gen) for p in params], params)
        assert (opt._last_tier == "cpu_fused") == fused
        return [p.detach().numpy().copy() for p in params] + [v.numpy() for v in opt.variables]

    by_norm = "clipnorm" in options or "global_clipnorm" in options
    for got, want in zip(run(True), run(False)):
        np.testing.assert_allclose(got, want, rtol=1e-6 if by_norm else 0, atol=1e-6 if by_norm else 0)


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
