"""Bad input: a clear error naming the argument and the value, and nothing changed."""

import functools
import warnings

import numpy as np
import pytest

import optimizer_db as db
import polyak
from polyak import optimizers, schedules

@pytest.mark.parametrize("kwargs,error,text", db.BAD_ARGUMENTS, ids=lambda x: str(x)[:40])
def test_invalid_constructor_argument(kwargs, error, text):
    with pytest.raises(error) as info:
        polyak.SGD(**kwargs)
    assert text in str(info.value)


@pytest.mark.parametrize("bad", db.BAD_CONSTRUCTIONS, ids=lambda bad: bad.name)
def test_invalid_schedule_and_wrapper_argument(bad):
    with pytest.raises(bad.error) as info:
        bad.make()
    assert bad.text in str(info.value)


def test_ints_and_numpy_scalars_are_accepted_where_keras_rejects_them():
    opt = polyak.SGD(learning_rate=1, momentum=0)
    assert opt.momentum == 0.0 and float(opt.learning_rate) == 1.0
    opt = polyak.SGD(learning_rate=np.float32(0.5), momentum=np.float64(0.5))
    assert opt.momentum == 0.5


# --- apply: validate before writing -----------------------------------------------


def _built():
    """An optimizer with every kind of state, after three steps on three weights."""
    return db.built_for("numpy", "cpu_fused")


def _snapshot(opt, weights):
    return db.state(opt, weights)


def _assert_unchanged(opt, weights, snapshot):
    after = db.state(opt, weights)
    assert len(after) == len(snapshot)
    for a, b in zip(after, snapshot):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tier", db.TIERS)
@pytest.mark.parametrize("bad", db.BAD_APPLY_INPUTS, ids=lambda bad: f"{bad.backend}-{bad.name}")
def test_apply_rejects_bad_input_and_changes_nothing(bad, tier):
    """On every tier: the error, with its text, raised before anything is written. A bad
    input to a fresh optimizer leaves it unbuilt."""
    pytest.importorskip(bad.backend)
    opt, weights = db.built_for(bad.backend, tier)
    snapshot = _snapshot(opt, weights)
    grads, variables = bad.make(weights)
    target = db.use_tier(polyak.SGD(), tier) if bad.fresh else opt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(bad.error) as info:
            target.apply(grads, variables)
    assert bad.text in str(info.value)
    _assert_unchanged(opt, weights, snapshot)
    assert not bad.fresh or (not target.built and len(target.variables) == 2)


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
