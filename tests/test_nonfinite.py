"""Non-finite gradients: Keras's poisoning by default, an explicit ``skip_nonfinite`` on request."""

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")
import keras  # noqa: E402

import optimizer_db as db  # noqa: E402
import polyak  # noqa: E402
from polyak.core.step import apply_step  # noqa: E402

SHAPES = [(3, 2), (2,), (4,)]
CONFIGS = db.configs("nonfinite")
POISONS = [("nan", np.nan, 0), ("inf", np.inf, 1), ("-inf", -np.inf, 2)]


def _weights():
    rng = np.random.default_rng(0)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def _grads(step, poison=None, where=0):
    rng = np.random.default_rng(100 + step)
    grads = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    if poison is not None:
        grads[where].flat[-1] = poison
    return grads


def test_by_default_a_nan_gradient_poisons_weights_and_momentum_as_in_keras():
    ours, theirs = _weights(), [keras.Variable(w) for w in _weights()]
    p_opt, k_opt = polyak.SGD(momentum=0.9), keras.optimizers.SGD(momentum=0.9)
    for step in range(3):
        grads = _grads(step, np.nan if step == 1 else None)
        p_opt.apply(grads, ours)
        k_opt.apply(grads, theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b.numpy())
    assert np.isnan(ours[0]).any() and np.isnan(p_opt.momentums[0].numpy()).any()
    assert p_opt.skipped_steps is None and "skip_nonfinite" not in p_opt.get_config()
    assert len(p_opt.variables) == len(k_opt.variables)


@pytest.mark.parametrize("poison,value,where", POISONS, ids=[p[0] for p in POISONS])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_a_skipped_step_changes_nothing_but_the_counter(config, poison, value, where):
    """Bad steps among good ones: the run equals the same run without the bad steps."""
    weights, clean = _weights(), _weights()
    guarded = config.with_options(skip_nonfinite=True).optimizer()
    reference = config.optimizer()  # unguarded: the same tier, so norms are summed in the same order
    for step in range(7):
        if step in (2, 5):
            before = [w.copy() for w in weights] + [v.numpy().copy() for v in guarded.variables]
            guarded.apply(_grads(step, value, where), weights)
            after = [w.copy() for w in weights] + [v.numpy().copy() for v in guarded.variables]
            for b, a in zip(before[:-1], after[:-1]):
                np.testing.assert_array_equal(a, b)
            assert int(after[-1]) == int(before[-1]) + 1
            continue
        guarded.apply(_grads(step), weights)
        reference.apply(_grads(step), clean)
    for a, b in zip(weights, clean):
        np.testing.assert_array_equal(a, b)
    assert [v.numpy().tolist() for v in guarded.variables[:-1]] == [v.numpy().tolist() for v in reference.variables]
    assert int(guarded.skipped_steps.numpy()) == 2 and int(guarded.iterations) == int(reference.iterations)
    assert db.tier_that_ran(guarded) == db.tier_that_ran(reference) == "cpu_fused"


def test_the_counter_comes_after_all_of_keras_variables():
    opt = polyak.SGD(momentum=0.9, use_ema=True, gradient_accumulation_steps=2, skip_nonfinite=True)
    keras_opt = keras.optimizers.SGD(momentum=0.9, use_ema=True, gradient_accumulation_steps=2)
    assert [v.name for v in opt.variables] == ["iteration", "learning_rate", "skipped_steps"]
    opt.build([polyak.Variable(w, name=f"w{i}") for i, w in enumerate(_weights())])
    keras_opt.build([keras.Variable(w, name=f"w{i}") for i, w in enumerate(_weights())])
    names = [v.name for v in opt.variables]
    assert names[:-1] == [v.name for v in keras_opt.variables] and names[-1] == "skipped_steps"
    assert opt.skipped_steps is opt.variables[-1] and opt.skipped_steps.dtype == "int64"
    store = {}
    opt.save_own_variables(store)
    assert store[str(len(store) - 1)].dtype == np.int64


def test_an_overwrite_with_gradient_weight_is_guarded_too():
    scale = polyak.Variable(np.array([2.0], np.float32), name="scale")
    scale.overwrite_with_gradient = True
    kernel = polyak.Variable(np.ones(2, np.float32), name="kernel")
    opt = polyak.SGD(momentum=0.9, skip_nonfinite=True)
    opt.apply([np.array([np.nan], np.float32), np.ones(2, np.float32)], [scale, kernel])
    assert scale.numpy().tolist() == [2.0] and kernel.numpy().tolist() == [1.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Gradients do not exist" for kernel
        opt.apply([np.array([np.inf], np.float32), None], [scale, kernel])
    assert scale.numpy().tolist() == [2.0] and int(opt.skipped_steps.numpy()) == 2


def test_stateless_apply_skips_the_same_way_and_mutates_nothing():
    config = dict(momentum=0.9, use_ema=True, gradient_accumulation_steps=2, skip_nonfinite=True)
    stateful, pure = polyak.SGD(**config), polyak.SGD(**config)
    weights, params = _weights(), _weights()
    pure.build(_weights())
    values = [v.numpy() for v in pure.variables]
    for step in range(5):
        grads = _grads(step, np.nan if step == 2 else None)
        frozen = [x.copy() for x in params + values]
        new_params, new_values = pure.stateless_apply(values, grads, params)
        for b, a in zip(frozen, params + values):
            np.testing.assert_array_equal(a, b)
        stateful.apply(grads, weights)
        params, values = new_params, new_values
    for a, b in zip(params, weights):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(values, stateful.variables):
        np.testing.assert_array_equal(a, b.numpy())
    assert int(values[-1]) == 1 and int(pure.skipped_steps.numpy()) == 0


def test_config_round_trip_and_validation():
    opt = polyak.SGD(momentum=0.5, skip_nonfinite=True)
    config = opt.get_config()
    assert config["skip_nonfinite"] is True
    again = polyak.SGD.from_config(config)
    assert again.skip_nonfinite and again.get_config() == config
    assert polyak.optimizers.deserialize(polyak.optimizers.serialize(opt)).skip_nonfinite
    with pytest.raises(TypeError, match="skip_nonfinite='yes'"):
        polyak.SGD(skip_nonfinite="yes")


def test_the_guarded_step_traces_under_jax_jit():
    """The skip is a ``bk.cond`` on an array predicate: it compiles with ``lax.cond``."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from polyak.backends.base import Backend

    class JaxKernels(Backend):  # the few kernels the step needs, until the JAX backend lands
        xp = jnp

        def asarray(self, value, dtype=None):
            return jnp.asarray(value, dtype)

        def cast(self, value, dtype):
            return jnp.asarray(value).astype(dtype)

        def scalar(self, value, dtype):
            return jnp.asarray(value, dtype)

        def zeros_like(self, value):
            return jnp.zeros_like(value)

        def cond(self, pred, true_fn, false_fn):
            return jax.lax.cond(pred, true_fn, false_fn)

    config = dict(momentum=0.9, use_ema=True, gradient_accumulation_steps=2, skip_nonfinite=True)
    opt, reference = polyak.SGD(**config), polyak.SGD(**config)
    weights = _weights()
    opt.build(_weights())
    plan, bk = opt._plan(), JaxKernels()
    values = [jnp.asarray(v.numpy(), jnp.int32 if v.dtype == "int64" else None) for v in opt.variables]
    state = opt.state_roles.state_from(opt.variables, values)
    params = [jnp.asarray(w) for w in _weights()]
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(1)
        return apply_step(plan, bk, params, state, grads)

    for k in range(5):
        grads = _grads(k, np.nan if k == 2 else None)
        params, state = step(params, state, [jnp.asarray(g) for g in grads])
        reference.apply(grads, weights)
    assert len(traces) == 1 and int(state.skipped) == 1 and int(state.iteration) == 4
    for a, b in zip(params, weights):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6)
