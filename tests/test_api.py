"""The public surface: namespaces, Variable, in-place arrays, statelessness, configs, stores."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")
import keras  # noqa: E402

import polyak  # noqa: E402
from polyak import optimizers, schedules  # noqa: E402
from user_schedules import Halving  # noqa: E402


# --- golden values, computed by hand --------------------------------------------------
def test_plain_sgd_golden():
    w = np.array([1.0, -2.0], np.float64)
    polyak.SGD(learning_rate=0.5).apply([np.array([0.25, 1.0])], [w])
    np.testing.assert_allclose(w, [0.875, -2.5])


def test_heavy_ball_and_nesterov_golden():
    lr, m, g = 0.5, 0.5, np.array([1.0])
    w, n = np.array([0.0]), np.array([0.0])
    heavy, nesterov = polyak.SGD(lr, momentum=m), polyak.SGD(lr, momentum=m, nesterov=True)
    for _ in range(2):
        heavy.apply([g], [w])
        nesterov.apply([g], [n])
    # v1 = -0.5, w1 = -0.5; v2 = -0.75, w2 = -1.25
    np.testing.assert_allclose(w, [-1.25])
    np.testing.assert_allclose(heavy.momentums[0].numpy(), [-0.75])
    # nesterov: w1 = 0 + (0.5 * -0.5 - 0.5) = -0.75; w2 = -0.75 + (0.5 * -0.75 - 0.5) = -1.625
    np.testing.assert_allclose(n, [-1.625])


def test_weight_decay_and_clipping_golden():
    w = np.array([2.0, 0.0])
    opt = polyak.SGD(learning_rate=0.5, weight_decay=0.1, clipnorm=1.0)
    opt.apply([np.array([3.0, 4.0])], [w])  # decay: 2 - 2*0.1*0.5 = 1.9; clipped g = (0.6, 0.8)
    np.testing.assert_allclose(w, [1.9 - 0.3, -0.4], rtol=1e-7)
    w = np.array([1.0, 1.0])
    polyak.SGD(learning_rate=1.0, global_clipnorm=5.0).apply([np.array([6.0, 8.0])], [w])
    np.testing.assert_allclose(w, [1 - 3.0, 1 - 4.0], rtol=1e-7)


def test_global_clipnorm_turns_a_non_finite_norm_into_nan():
    w = np.array([1.0, 1.0])
    polyak.SGD(global_clipnorm=1.0).apply([np.array([np.inf, 1.0])], [w])
    assert np.isnan(w).all()


def test_ema_and_accumulation_golden():
    w = np.array([0.0])
    opt = polyak.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5, gradient_accumulation_steps=2)
    opt.apply([np.array([1.0])], [w])  # accumulate only; EMA copies w (0)
    np.testing.assert_allclose(w, [0.0])
    assert int(opt.iterations) == 0
    opt.apply([np.array([3.0])], [w])  # mean gradient 2 -> w = -2; first real update: EMA copies w
    np.testing.assert_allclose(w, [-2.0])
    np.testing.assert_allclose(opt._averages[0].numpy(), [-2.0])
    assert int(opt.iterations) == 1 and int(opt._iterations.numpy()) == 2
    opt.apply([np.array([1.0])], [w])  # accumulate; EMA moves: 0.5 * -2 + 0.5 * -2 = -2
    np.testing.assert_allclose(opt._accumulators[0].numpy(), [1.0])


# --- the Keras port: change one import --------------------------------------------------
KERAS_SNIPPET = """
opt = optimizers.SGD(learning_rate=optimizers.schedules.CosineDecay(0.1, 100, warmup_target=0.2, warmup_steps=5),
                     momentum=0.9, nesterov=True, weight_decay=1e-3, global_clipnorm=1.0, use_ema=True)
opt.exclude_from_weight_decay(var_names=["bias"])
kernel = Variable(np.full((2, 2), 0.5, "float32"), name="kernel")
bias = Variable(np.zeros(2, "float32"), name="bias")
for step in range(5):
    opt.apply_gradients(zip([np.ones((2, 2), "float32"), np.ones(2, "float32")], [kernel, bias]))
opt.finalize_variable_values([kernel, bias])
result = (kernel.numpy(), bias.numpy(), int(opt.iterations.numpy()), float(opt.learning_rate))
"""


def test_keras_snippet_runs_unchanged_with_the_import_replaced():
    ran = {}
    for module in (keras, polyak):
        namespace = {"optimizers": module.optimizers, "Variable": module.Variable, "np": np}
        exec(KERAS_SNIPPET, namespace)
        ran[module.__name__] = namespace["result"]
    for a, b in zip(ran["keras"], ran["polyak"]):
        np.testing.assert_allclose(b, a, rtol=1e-6)


# --- namespaces and serialization ---------------------------------------------------------
def test_namespace_mirrors_keras_optimizers():
    for name in ["Optimizer", "SGD", "schedules", "get", "serialize", "deserialize"]:
        assert hasattr(optimizers, name) and hasattr(keras.optimizers, name)
    for name in ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
                 "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts", "serialize", "deserialize"]:
        assert hasattr(schedules, name) and hasattr(keras.optimizers.schedules, name)
    assert polyak.schedules is optimizers.schedules and polyak.SGD is optimizers.SGD


def test_get():
    assert isinstance(optimizers.get("sgd"), polyak.SGD)
    assert isinstance(optimizers.get("SGD"), polyak.SGD)
    assert optimizers.get(None) is None
    opt = polyak.SGD()
    assert optimizers.get(opt) is opt
    again = optimizers.get(optimizers.serialize(polyak.SGD(0.3, momentum=0.5)))
    assert again.momentum == 0.5


def test_config_matches_keras_and_round_trips():
    schedule_args = (0.1, 100)
    kw = dict(momentum=0.9, nesterov=True, weight_decay=0.01, clipnorm=1.0, use_ema=True,
              ema_momentum=0.9, ema_overwrite_frequency=5, loss_scale_factor=8.0,
              gradient_accumulation_steps=4, name="opt")
    ours = polyak.SGD(learning_rate=schedules.CosineDecay(*schedule_args), **kw)
    theirs = keras.optimizers.SGD(learning_rate=keras.optimizers.schedules.CosineDecay(*schedule_args), **kw)
    assert ours.get_config() == theirs.get_config()
    assert optimizers.serialize(ours) == keras.optimizers.serialize(theirs)
    # configs cross over: Keras's dict builds a polyak optimizer and the other way round
    assert optimizers.deserialize(keras.optimizers.serialize(theirs)).get_config() == ours.get_config()
    assert keras.optimizers.deserialize(optimizers.serialize(ours)).get_config() == theirs.get_config()
    assert polyak.SGD.from_config(ours.get_config()).get_config() == ours.get_config()
    float_lr = polyak.SGD(0.01).get_config()["learning_rate"]
    assert float_lr == keras.optimizers.SGD(0.01).get_config()["learning_rate"]


@pytest.mark.parametrize("name,kwargs", [
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.3, staircase=True)),
    ("PiecewiseConstantDecay", dict(boundaries=[3, 9], values=[1.0, 0.5, 0.1])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=7, end_learning_rate=0.01, power=0.5,
                             cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=4, decay_rate=0.5)),
    ("CosineDecay", dict(initial_learning_rate=0.01, decay_steps=20, alpha=0.05, warmup_target=0.1,
                         warmup_steps=5)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=4, t_mul=1.5, m_mul=0.8,
                                 alpha=0.01)),
])
def test_schedule_values_and_configs_match_keras(name, kwargs):
    ours = getattr(schedules, name)(**kwargs)
    theirs = getattr(keras.optimizers.schedules, name)(**kwargs)
    for step in list(range(40)) + [1000, 12345]:
        a, b = theirs(np.int32(step)), ours(np.int64(step))
        assert np.asarray(b).dtype == np.float32
        np.testing.assert_array_equal(b, a, err_msg=f"step {step}")
    assert ours.get_config() == theirs.get_config()
    assert schedules.serialize(ours) == keras.optimizers.schedules.serialize(theirs)
    assert schedules.deserialize(schedules.serialize(ours)).get_config() == ours.get_config()


def test_registered_user_schedule_round_trips():
    config = optimizers.serialize(polyak.SGD(learning_rate=Halving(0.5)))
    restored = optimizers.deserialize(config)
    assert isinstance(restored._learning_rate, Halving) and restored._learning_rate.rate == 0.5


# --- Variable --------------------------------------------------------------------------------
def test_variable_api():
    v = polyak.Variable(np.arange(3.0), name="w")
    assert v.dtype == "float32" and v.shape == (3,) and v.name == "w" and v.path == "w" and v.trainable
    v.assign([1.0, 2.0, 3.0])
    v.assign_add(np.ones(3))
    v.assign_sub(np.full(3, 0.5))
    np.testing.assert_array_equal(v.numpy(), [1.5, 2.5, 3.5])
    assert v.value.dtype == np.float32 and isinstance(v.numpy(), np.ndarray)
    with pytest.raises(ValueError, match="must match its shape"):
        v.assign(np.zeros(4))
    with pytest.raises(TypeError, match="constraint"):
        v.constraint = 3
    v.overwrite_with_gradient = True
    z = polyak.Variable("zeros", shape=(2, 2), dtype="float64")
    assert z.dtype == "float64" and z.numpy().sum() == 0
    assert polyak.Variable(np.ones(2, np.float64)).dtype == "float32"  # Keras's default
    assert float(polyak.Variable(2.5)) == 2.5 and (polyak.Variable(2.0) * 3) == 6.0
    with pytest.raises(ValueError, match="without '/'"):
        polyak.Variable(1.0, name="a/b")


def test_constraint_and_overwrite_with_gradient():
    kernel = polyak.Variable(np.array([0.1, -0.1], np.float32), name="kernel")
    kernel.constraint = lambda w: np.maximum(w, 0)
    scale = polyak.Variable(np.array([5.0], np.float32), name="scale")
    scale.overwrite_with_gradient = True
    opt = polyak.SGD(momentum=0.9)
    opt.apply([np.array([1.0, 1.0], np.float32), np.array([7.0], np.float32)], [kernel, scale])
    np.testing.assert_allclose(kernel.numpy(), [0.09, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(scale.numpy(), [7.0])
    assert [v.name for v in opt.variables] == ["iteration", "learning_rate", "kernel_momentum"]


# --- plain NumPy arrays, in place ------------------------------------------------------------
def test_plain_arrays_are_updated_in_place_including_views():
    base = np.zeros((4, 6), np.float32)
    column = base[:, 1]  # non-contiguous view
    block = base[1:3, 2:5]
    assert not column.flags.c_contiguous
    opt = polyak.SGD(learning_rate=1.0, momentum=0.5)
    for _ in range(2):
        opt.apply([np.ones(4, np.float32), np.ones((2, 3), np.float32)], [column, block])
    np.testing.assert_allclose(base[:, 1], -2.5)
    np.testing.assert_allclose(base[1:3, 2:5], -2.5)
    assert base[0, 0] == 0 and base[:, 5].sum() == 0


def test_apply_on_a_subset_of_the_built_weights():
    a, b = np.zeros(2), np.zeros(3)
    opt = polyak.SGD(learning_rate=1.0)
    opt.build([a, b])
    opt.apply([np.ones(3)], [b])
    assert a.sum() == 0 and b.sum() == -3
    opt.apply([np.ones(2), np.ones(3)])
    assert a.sum() == -2 and int(opt.iterations.numpy()) == 2


def test_missing_gradient_warns_and_skips():
    a, b = np.zeros(2), np.zeros(3)
    with pytest.warns(UserWarning, match=r"variable_0"):
        polyak.SGD(learning_rate=1.0).apply([None, np.ones(3)], [a, b])
    assert a.sum() == 0 and b.sum() == -3


# --- stateless_apply ---------------------------------------------------------------------------
def test_stateless_apply_equals_apply_and_mutates_nothing():
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=s).astype(np.float32) for s in [(3, 3), (3,)]]
    kwargs = dict(momentum=0.9, nesterov=True, use_ema=True, ema_overwrite_frequency=2,
                  gradient_accumulation_steps=2, weight_decay=0.1, global_clipnorm=1.0)
    stateful, pure = polyak.SGD(**kwargs), polyak.SGD(**kwargs)
    pure.build([w.copy() for w in weights])
    params = [w.copy() for w in weights]
    values = [v.numpy() for v in pure.variables]
    stateful_weights = [w.copy() for w in weights]
    for step in range(6):
        grads = [rng.normal(size=w.shape).astype(np.float32) for w in weights]
        frozen = [p.copy() for p in params] + [v.copy() for v in values] + [g.copy() for g in grads]
        new_params, new_values = pure.stateless_apply(values, grads, params)
        for before, after in zip(frozen, params + values + grads):
            np.testing.assert_array_equal(before, after)
        stateful.apply(grads, stateful_weights)
        params, values = new_params, new_values
        # apply runs the fused kernel, whose global norm is summed in another order
        for a, b in zip(params, stateful_weights):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(values, stateful.variables):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-7)
    assert int(pure._iterations.numpy()) == 0  # the pure optimizer's own state never moved


# --- learning rate, iterations, misc methods ---------------------------------------------------
def test_learning_rate_setter_and_variables():
    opt = polyak.SGD(0.1)
    opt.learning_rate = 0.5
    assert float(opt.learning_rate) == 0.5 and [v.name for v in opt.variables] == ["iteration", "learning_rate"]
    opt.learning_rate = schedules.ExponentialDecay(0.1, 10, 0.5)
    assert [v.name for v in opt.variables] == ["iteration"]
    np.testing.assert_allclose(opt.learning_rate, 0.1)
    opt.learning_rate = lambda: 0.25
    assert opt.learning_rate == 0.25


def test_scale_loss_update_step_add_variable():
    assert polyak.SGD(loss_scale_factor=4.0).scale_loss(2.0) == 8.0
    assert polyak.SGD().scale_loss(2.0) == 2.0
    w = polyak.Variable(np.zeros(2), name="w")
    opt = polyak.SGD(learning_rate=1.0, momentum=0.5)
    opt.build([w])
    opt.update_step(np.ones(2, np.float32), w, np.float32(1.0))
    np.testing.assert_array_equal(w.numpy(), [-1, -1])
    np.testing.assert_array_equal(opt.momentums[0].numpy(), [-1, -1])
    extra = opt.add_variable((3,), initializer="ones", name="extra")
    assert extra.path == f"{opt.name}/extra" and extra.numpy().sum() == 3
    pair = opt.add_optimizer_variables([w], ["m", "v"])
    assert [p[0].name for p in pair] == ["w_m", "w_v"]
    opt.assign(w, np.full(2, 3.0))
    opt.assign_add(w, np.ones(2))
    opt.assign_sub(w, np.full(2, 2.0))
    np.testing.assert_array_equal(w.numpy(), [2, 2])


def test_finalize_variable_values_and_set_weights():
    w = np.zeros(2)
    opt = polyak.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5)
    for _ in range(3):
        opt.apply([np.ones(2)], [w])
    opt.finalize_variable_values([w])
    np.testing.assert_allclose(w, opt._averages[0].numpy())
    opt.set_weights([np.int64(7), np.float32(0.5), np.zeros(2, np.float32)])
    assert int(opt.iterations.numpy()) == 7 and float(opt.learning_rate) == 0.5


# --- stores: Keras's keys, both directions ------------------------------------------------------
def test_store_written_by_keras_loads_into_polyak_and_back():
    rng = np.random.default_rng(5)
    init = [rng.normal(size=s).astype(np.float32) for s in [(2, 3), (3,)]]
    kwargs = dict(momentum=0.9, use_ema=True, gradient_accumulation_steps=2)

    def run(module, variables, opt, steps):
        for _ in range(steps):
            opt.apply([np.full(v.shape, 0.1, np.float32) for v in variables], variables)

    k_vars = [keras.Variable(x) for x in init]
    k_opt = keras.optimizers.SGD(**kwargs)
    run(keras, k_vars, k_opt, 3)
    store = {}
    k_opt.save_own_variables(store)
    p_vars = [polyak.Variable(v.numpy()) for v in k_vars]
    p_opt = polyak.SGD(**kwargs)
    p_opt.build(p_vars)
    p_opt.load_own_variables(store)
    run(polyak, p_vars, p_opt, 3)
    run(keras, k_vars, k_opt, 3)
    for a, b in zip(k_vars, p_vars):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
    back = {}
    p_opt.save_own_variables(back)
    assert sorted(back) == sorted(store)
    k_opt.load_own_variables(back)


def test_load_own_variables_with_another_count_warns_and_skips():
    opt = polyak.SGD(momentum=0.9)
    opt.build([np.zeros(2)])
    with pytest.warns(UserWarning, match="Skipping variable loading"):
        opt.load_own_variables({"0": np.int64(3)})
    assert int(opt.iterations.numpy()) == 0


def test_decay_keyword_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="decay"):
        polyak.SGD(decay=0.1)
