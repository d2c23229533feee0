"""LossScaleOptimizer against Keras's, on gradient streams where inf and NaN appear."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")
import keras  # noqa: E402

import optimizer_db as db  # noqa: E402
import polyak  # noqa: E402
from polyak import optimizers  # noqa: E402


def _stream(seed, steps, shapes, dtype):
    rng = np.random.default_rng(seed)
    bad = set(rng.choice(steps, size=steps // 4, replace=False).tolist())
    for step in range(steps):
        grads = [(rng.normal(size=s) * 1000).astype(dtype) for s in shapes]
        if step in bad:
            k = rng.integers(len(shapes))
            grads[k].flat[rng.integers(grads[k].size)] = rng.choice([np.inf, -np.inf, np.nan])
        yield grads


def _run(module, inner_kwargs, dtype, steps, growth, seed):
    shapes = [(3, 2), (2,)]
    rng = np.random.default_rng(seed + 1)
    variables = [module.Variable(rng.normal(size=s).astype(dtype), dtype=dtype) for s in shapes]
    opt = module.optimizers.LossScaleOptimizer(module.optimizers.SGD(**inner_kwargs), initial_scale=64.0,
                                               dynamic_growth_steps=growth)
    history = []
    for grads in _stream(seed, steps, shapes, dtype):
        opt.apply(grads, variables)
        history.append(([v.numpy().copy() for v in variables], [np.array(v.numpy()) for v in opt.variables],
                        int(np.asarray(opt.iterations))))
    return history


@pytest.mark.parametrize("inner", [c.options for c in db.configs("loss-scaled")[:3]],
                         ids=[c.name for c in db.configs("loss-scaled")[:3]])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_matches_keras_step_by_step(inner, dtype):
    expected = _run(keras, inner, dtype, steps=40, growth=3, seed=0)
    actual = _run(polyak, inner, dtype, steps=40, growth=3, seed=0)
    for step, (want, got) in enumerate(zip(expected, actual)):
        for a, b in zip(want[0] + want[1], got[0] + got[1]):
            np.testing.assert_array_equal(b, a, err_msg=f"step {step}")
        assert got[2] == want[2]


def test_a_bad_step_moves_nothing_but_the_scale():
    w = np.ones(2, np.float32)
    opt = optimizers.LossScaleOptimizer(polyak.SGD(momentum=0.9, use_ema=True), initial_scale=8.0)
    opt.apply([np.ones(2, np.float32)], [w])
    before = [w.copy()] + [v.numpy().copy() for v in opt.inner_optimizer.variables]
    opt.apply([np.array([np.nan, 1.0], np.float32)], [w])
    after = [w] + [v.numpy() for v in opt.inner_optimizer.variables]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert float(opt.dynamic_scale.numpy()) == 4.0 and int(opt.step_counter.numpy()) == 0


def test_stateless_apply_equals_apply():
    rng = np.random.default_rng(2)
    w = [rng.normal(size=(3,)).astype(np.float32)]
    stateful = optimizers.LossScaleOptimizer(polyak.SGD(momentum=0.5), dynamic_growth_steps=2)
    pure = optimizers.LossScaleOptimizer(polyak.SGD(momentum=0.5), dynamic_growth_steps=2)
    pure.build([w[0].copy()])
    params, values = [w[0].copy()], [v.numpy() for v in pure.variables]
    for grads in _stream(4, 12, [(3,)], np.float32):
        params, values = pure.stateless_apply(values, grads, params)
        stateful.apply(grads, w)
        np.testing.assert_array_equal(params[0], w[0])
        for a, b in zip(values, stateful.variables):
            np.testing.assert_array_equal(a, b.numpy())


def test_config_round_trip_and_keras_interop():
    opt = optimizers.LossScaleOptimizer(polyak.SGD(0.1, momentum=0.9), initial_scale=1024.0,
                                        dynamic_growth_steps=10, name="lso")
    ours = optimizers.serialize(opt)
    theirs = keras.optimizers.serialize(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9, name=opt.inner_optimizer.name), initial_scale=1024.0,
        dynamic_growth_steps=10, name="lso"))
    assert ours == theirs
    again = optimizers.deserialize(ours)
    assert isinstance(again, optimizers.LossScaleOptimizer) and again.inner_optimizer.momentum == 0.9
    assert optimizers.get(theirs).get_config() == opt.get_config()


def test_scale_loss_and_properties():
    opt = optimizers.LossScaleOptimizer(polyak.SGD(0.25), initial_scale=4.0)
    assert opt.scale_loss(2.0) == 8.0
    w = np.zeros(2, np.float32)
    opt.apply([np.ones(2, np.float32)], [w])
    assert float(opt.learning_rate) == 0.25 and int(opt.iterations.numpy()) == 1
    opt.learning_rate = 0.5
    assert float(opt.inner_optimizer.learning_rate) == 0.5
    assert [v.name for v in opt.variables][:4] == ["iteration", "learning_rate", "step_counter", "dynamic_scale"]


# (bad arguments: ``optimizer_db.BAD_CONSTRUCTIONS``, run by ``test_errors``)


def test_checkpoint_resume_keeps_the_scale(tmp_path):
    shapes = [(3, 2), (2,)]
    stream = list(_stream(9, 16, shapes, np.float32))

    def fresh():
        return [np.full(s, 0.5, np.float32) for s in shapes], optimizers.LossScaleOptimizer(
            polyak.SGD(momentum=0.9, use_ema=True, master_weights=True), initial_scale=32.0, dynamic_growth_steps=2)

    weights, opt = fresh()
    for grads in stream:
        opt.apply(grads, weights)
    half, first = fresh()
    for grads in stream[:8]:
        first.apply(grads, half)
    polyak.save(tmp_path / "run.safetensors", first, half)
    resumed = [np.zeros(s, np.float32) for s in shapes]
    second = polyak.load(tmp_path / "run.safetensors", variables=resumed)
    for grads in stream[8:]:
        second.apply(grads, resumed)
    for a, b in zip(resumed + [v.numpy() for v in second.variables], weights + [v.numpy() for v in opt.variables]):
        np.testing.assert_array_equal(a, b)


def _run_on(backend, inner_kwargs, steps, growth, seed):
    """The float32 run of ``_run`` with torch tensors (apply) or JAX arrays (jitted stateless_apply)."""
    from reference import ARRAYS

    convert = ARRAYS[backend]
    shapes = [(3, 2), (2,)]
    rng = np.random.default_rng(seed + 1)
    variables = [polyak.Variable(convert(rng.normal(size=s).astype(np.float32)), dtype="float32") for s in shapes]
    opt = optimizers.LossScaleOptimizer(polyak.SGD(**inner_kwargs), initial_scale=64.0, dynamic_growth_steps=growth)
    opt.build(variables)
    history = []
    if backend == "jax":
        import jax

        step = jax.jit(opt.stateless_apply)
        params, values = [v.value for v in variables], [v.value for v in opt.variables]
    for grads in _stream(seed, steps, shapes, np.float32):
        grads = [convert(g) for g in grads]
        if backend == "jax":
            params, values = step(values, grads, params)
            for variable, value in zip(variables + opt.variables, params + values):
                variable.assign(value)
        else:
            opt.apply(grads, variables)
        history.append(([np.array(v.numpy()) for v in variables], [np.array(v.numpy()) for v in opt.variables],
                        int(np.asarray(opt.iterations.numpy() if hasattr(opt.iterations, "numpy")
                                       else opt.iterations))))
    return history


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("inner", [c.options for c in db.configs("loss-scaled")[::3]],
                         ids=[c.name for c in db.configs("loss-scaled")[::3]])
def test_matches_keras_on_torch_and_jax(backend, inner):
    """The skip and the scale's growth run through ``bk.cond``: eager on torch, ``lax.cond`` under jit."""
    pytest.importorskip(backend)
    expected = _run(keras, inner, "float32", steps=24, growth=3, seed=0)
    actual = _run_on(backend, inner, steps=24, growth=3, seed=0)
    for step, (want, got) in enumerate(zip(expected, actual)):
        for a, b in zip(want[0] + want[1], got[0] + got[1]):
            # XLA fuses the update's multiply-adds (one rounding where Keras has two): float32 ulps
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 if backend == "jax" else 0,
                                       err_msg=f"{backend} step {step}")
        assert got[2] == want[2]
