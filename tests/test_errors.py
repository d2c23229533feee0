"""Bad input: a clear error naming the argument and the value, and nothing changed."""

import copy
import functools
import math
import warnings

import numpy as np
import pytest

import polyak
from polyak import optimizers, schedules

# (keywords, error type, text the message must contain)
INVALID_ARGUMENTS = [
    ({"momentum": 1.5}, ValueError, "momentum=1.5"),
    ({"momentum": -0.1}, ValueError, "momentum=-0.1"),
    ({"momentum": "0.9"}, TypeError, "momentum='0.9'"),
    ({"nesterov": 1}, TypeError, "nesterov=1"),
    ({"learning_rate": math.inf}, ValueError, "learning_rate=inf"),
    ({"learning_rate": math.nan}, ValueError, "learning_rate=nan"),
    ({"learning_rate": -0.1}, ValueError, "learning_rate=-0.1"),
    ({"learning_rate": "fast"}, TypeError, "learning_rate='fast'"),
    ({"learning_rate": True}, TypeError, "learning_rate=True"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, ValueError, "clipnorm=1.0, clipvalue=1.0"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, "global_clipnorm=1.0"),
    ({"clipnorm": -1.0}, ValueError, "clipnorm=-1.0"),
    ({"global_clipnorm": math.nan}, ValueError, "global_clipnorm=nan"),
    ({"clipvalue": "big"}, TypeError, "clipvalue='big'"),
    ({"weight_decay": -1e-4}, ValueError, "weight_decay=-0.0001"),
    ({"gradient_accumulation_steps": 1}, ValueError, "gradient_accumulation_steps=1"),
    ({"gradient_accumulation_steps": 2.5}, TypeError, "gradient_accumulation_steps=2.5"),
    ({"use_ema": True, "ema_momentum": 1.5}, ValueError, "ema_momentum=1.5"),
    ({"ema_momentum": -0.5}, ValueError, "ema_momentum=-0.5"),
    ({"use_ema": "yes"}, TypeError, "use_ema='yes'"),
    ({"use_ema": True, "ema_overwrite_frequency": 0}, ValueError, "ema_overwrite_frequency=0"),
    ({"ema_overwrite_frequency": 1.5}, TypeError, "ema_overwrite_frequency=1.5"),
    ({"loss_scale_factor": 0.0}, ValueError, "loss_scale_factor=0.0"),
    ({"loss_scale_factor": math.inf}, ValueError, "loss_scale_factor=inf"),
    ({"name": 3}, TypeError, "name=3"),
    ({"lerning_rate": 0.1}, ValueError, "lerning_rate"),
]


@pytest.mark.parametrize("kwargs,error,text", INVALID_ARGUMENTS, ids=lambda x: str(x)[:40])
def test_invalid_constructor_argument(kwargs, error, text):
    with pytest.raises(error) as info:
        polyak.SGD(**kwargs)
    assert text in str(info.value)


@pytest.mark.parametrize("factory,error,text", [
    (lambda: schedules.ExponentialDecay(0.1, 0, 0.5), ValueError, "decay_steps=0"),
    (lambda: schedules.PolynomialDecay(0.1, -3), ValueError, "decay_steps=-3"),
    (lambda: schedules.CosineDecay(0.1, 10, warmup_steps=-1), ValueError, "warmup_steps=-1"),
    (lambda: schedules.CosineDecayRestarts(0.1, 0), ValueError, "first_decay_steps=0"),
    (lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1]), ValueError, "length of boundaries"),
    (lambda: schedules.PiecewiseConstantDecay([3, 2], [0.1, 0.2, 0.3]), ValueError, "boundaries=[3, 2]"),
    (lambda: schedules.ExponentialDecay("a", 10, 0.5), TypeError, "initial_learning_rate='a'"),
])
def test_invalid_schedule_argument(factory, error, text):
    with pytest.raises(error) as info:
        factory()
    assert text in str(info.value)


def test_ints_and_numpy_scalars_are_accepted_where_keras_rejects_them():
    opt = polyak.SGD(learning_rate=1, momentum=0)
    assert opt.momentum == 0.0 and float(opt.learning_rate) == 1.0
    opt = polyak.SGD(learning_rate=np.float32(0.5), momentum=np.float64(0.5))
    assert opt.momentum == 0.5


# --- apply: validate before writing -----------------------------------------------


def _built(**kwargs):
    """An optimizer with every kind of state, after two steps on three weights."""
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=s).astype(np.float32) for s in [(3, 2), (2,), (4,)]]
    opt = polyak.SGD(momentum=0.9, use_ema=True, gradient_accumulation_steps=2, weight_decay=0.01, **kwargs)
    for _ in range(3):
        opt.apply([np.ones_like(w) for w in weights], weights)
    return opt, weights


def _snapshot(opt, weights):
    return [w.copy() for w in weights], [v.numpy().copy() for v in opt.variables], copy.copy(opt.built)


def _assert_unchanged(opt, weights, snapshot):
    before_weights, before_vars, _ = snapshot
    for a, b in zip(weights, before_weights):
        np.testing.assert_array_equal(a, b)
    assert len(opt.variables) == len(before_vars)
    for v, b in zip(opt.variables, before_vars):
        np.testing.assert_array_equal(v.numpy(), b)


APPLY_ERRORS = [
    ("count", lambda w: ([np.ones_like(w[0])], w), ValueError, "1 gradients for 3 variables"),
    ("shape", lambda w: ([np.ones((2, 3), np.float32), np.ones(2), np.ones(4)], w), ValueError,
     "must have the variable's shape (3, 2). Received: gradient shape (2, 3)"),
    ("broadcastable shape", lambda w: ([np.ones((1, 2), np.float32), np.ones(2), np.ones(4)], w), ValueError,
     "gradient shape (1, 2)"),
    ("string gradient", lambda w: (["abc", np.ones(2), np.ones(4)], w), TypeError, "real number array"),
    ("object gradient", lambda w: ([object(), np.ones(2), np.ones(4)], w), TypeError, "variable_0"),
    ("complex gradient", lambda w: ([np.ones((3, 2), complex), np.ones(2), np.ones(4)], w), TypeError,
     "complex"),
    ("unknown variable", lambda w: ([np.ones(2)], [np.zeros(2, np.float32)]), ValueError, "Unknown variable"),
    ("all None", lambda w: ([None, None, None], w), ValueError, "No gradients provided"),
    ("integer weights", lambda w: ([np.ones(2)], [np.zeros(2, np.int64)]), TypeError, "floating dtype"),
    ("not an array", lambda w: ([np.ones(2)], [[0.0, 0.0]]), TypeError, "type list"),
]


@pytest.mark.parametrize("case,make,error,text", APPLY_ERRORS, ids=[c[0] for c in APPLY_ERRORS])
def test_apply_rejects_bad_input_and_changes_nothing(case, make, error, text):
    opt, weights = _built()
    snapshot = _snapshot(opt, weights)
    grads, variables = make(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            opt.apply(grads, variables)
    assert text in str(info.value)
    _assert_unchanged(opt, weights, snapshot)


def test_a_failing_first_apply_leaves_the_optimizer_unbuilt():
    opt = polyak.SGD(momentum=0.9)
    w = np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        opt.apply([np.ones(4)], [w])
    assert not opt.built and len(opt.variables) == 2
    np.testing.assert_array_equal(w, 0)


def test_read_only_array_is_refused():
    w = np.zeros(3, np.float32)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        polyak.SGD().apply([np.ones(3)], [w])


def test_apply_without_variables_before_build():
    with pytest.raises(ValueError, match="must already be built"):
        polyak.SGD().apply([np.ones(3)])


def test_stateless_apply_rejects_mismatched_lists_and_shapes():
    opt, weights = _built()
    values = [v.numpy() for v in opt.variables]
    grads = [np.ones_like(w) for w in weights]
    with pytest.raises(ValueError, match="optimizer_variables"):
        opt.stateless_apply(values[:-1], grads, weights)
    with pytest.raises(ValueError, match="trainable_variables"):
        opt.stateless_apply(values, grads, weights[:2])
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        opt.stateless_apply(values, grads, [np.ones((2, 3), np.float32)] + weights[1:])
    with pytest.raises(ValueError, match="must be built"):
        polyak.SGD().stateless_apply([], grads, weights)


def test_set_weights_checks_every_shape_before_assigning():
    opt, weights = _built()
    snapshot = _snapshot(opt, weights)
    bad = [v.numpy() for v in opt.variables]
    bad[-1] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="not compatible"):
        opt.set_weights(bad)
    with pytest.raises(ValueError, match="one per optimizer variable"):
        opt.set_weights(bad[:3])
    _assert_unchanged(opt, weights, snapshot)


def test_load_own_variables_checks_shapes_before_assigning():
    opt, weights = _built()
    snapshot = _snapshot(opt, weights)
    store = {str(i): v.numpy() for i, v in enumerate(opt.variables)}
    store[str(len(store) - 1)] = np.zeros(9, np.float32)
    with pytest.raises(ValueError, match="not compatible"):
        opt.load_own_variables(store)
    _assert_unchanged(opt, weights, snapshot)


def test_exclude_from_weight_decay_after_build():
    opt, _ = _built()
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_weight_decay(var_names=["bias"])


def test_setting_a_float_on_a_schedule_optimizer():
    opt = polyak.SGD(learning_rate=schedules.ExponentialDecay(0.1, 10, 0.9))
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.5


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match="Unknown optimizer 'adamax_plus'"):
        optimizers.get("adamax_plus")
    with pytest.raises(ValueError, match="Could not interpret"):
        optimizers.get(42)


def test_callable_object_learning_rate_cannot_be_serialized():
    with pytest.raises(TypeError, match="Cannot serialize the learning rate"):
        polyak.SGD(learning_rate=functools.partial(float, 0.1)).get_config()
