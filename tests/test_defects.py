"""Regression tests for defects found by reading the code as a newcomer (issue 12, item 7).

Each test failed before its fix: the message it checks was wrong or missing, or the
refused call had changed the optimizer.
"""

import warnings

import numpy as np
import pytest
import torch

import optimizer_db as db
import polyak
from polyak import optimizers


def _state(opt, weights):
    return [np.array(polyak.backends.host_array(w, transfer=True)) for w in weights] + [
        v.numpy().copy() for v in opt.variables
    ]


def _assert_same(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(b, a)


# --- a ragged nested gradient: was "NameError: name 'what' is not defined" -----------------------
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_ragged_gradient_is_refused_naming_the_variable_and_the_value(kind):
    make = {"numpy": lambda: np.zeros((2, 2), np.float32), "torch": lambda: torch.nn.Parameter(torch.zeros(2, 2))}
    weights = [make[kind](), make[kind]()]
    opt = polyak.SGD(momentum=0.9)
    opt.apply([np.ones((2, 2), np.float32)] * 2, weights)
    before = _state(opt, weights)
    with pytest.raises(TypeError) as info:
        opt.apply([np.ones((2, 2), np.float32), [[1.0, 2.0], [1.0]]], weights)
    message = str(info.value)
    assert "'variable_1'" in message and "is not an array" in message and "[[1.0, 2.0], [1.0]]" in message
    _assert_same(before, _state(opt, weights))


def test_a_ragged_gradient_in_stateless_apply_names_the_variable():
    opt = polyak.SGD()
    opt.build([np.zeros(2, np.float32)])
    with pytest.raises(TypeError, match=r"'variable_0' is not an array.*Received: \[\[1.0, 2.0\], \[1.0\]\]"):
        opt.stateless_apply([v.numpy() for v in opt.variables], [[[1.0, 2.0], [1.0]]], [np.zeros(2, np.float32)])


# --- a non-leaf torch tensor: was updated without complaint ---------------------------------------
def _non_leaf():
    return torch.ones(3, requires_grad=True) * 2


def test_a_non_leaf_tensor_is_refused_at_build():
    opt = polyak.SGD()
    with pytest.raises(ValueError, match=r"'variable_1' is a non-leaf torch tensor.*grad_fn=MulBackward0"):
        opt.build([torch.nn.Parameter(torch.ones(2)), _non_leaf()])
    assert not opt.built and len(opt.variables) == 2


def test_a_non_leaf_tensor_is_refused_at_the_first_apply_and_nothing_is_written():
    weight = _non_leaf()
    opt = polyak.SGD(learning_rate=1.0)
    with pytest.raises(ValueError, match="'variable_0' is a non-leaf torch tensor"):
        opt.apply([torch.ones(3)], [weight])
    assert not opt.built and weight.tolist() == [2.0, 2.0, 2.0]


def test_a_non_leaf_tensor_is_refused_by_a_built_optimizer_and_nothing_changes():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    opt = polyak.SGD(momentum=0.9, use_ema=True)
    opt.apply([torch.ones(3), torch.ones(2)], params)
    before = _state(opt, params)
    with pytest.raises(ValueError, match="'variable_1' is a non-leaf torch tensor"):
        opt.apply([torch.ones(3), torch.ones(3)], [params[0], params[0] * 2])
    _assert_same(before, _state(opt, params))


@pytest.mark.parametrize("tier", ["reference", "cpu_fused"])
def test_a_tensor_made_non_leaf_after_build_is_refused_before_any_write(tier):
    """``w.add_(x)`` with ``x`` requiring grad turns a plain leaf into a non-leaf in place."""
    w = torch.zeros(3)
    opt = polyak.SGD(learning_rate=1.0)
    opt.build([w])
    db.use_tier(opt, tier)
    w.add_(torch.ones(3, requires_grad=True))
    with pytest.raises(ValueError, match="'variable_0' is a non-leaf torch tensor"):
        opt.apply([torch.ones(3)], [w])
    assert w.tolist() == [1.0, 1.0, 1.0] and int(opt.iterations.numpy()) == 0


def test_leaf_tensors_and_variables_made_from_non_leaf_tensors_are_accepted():
    weight = polyak.Variable(_non_leaf(), name="w")  # a Variable holds its own copy
    plain = torch.zeros(2)  # a leaf that does not require grad
    polyak.SGD(learning_rate=1.0).apply([torch.ones(3), torch.ones(2)], [weight, plain])
    assert weight.numpy().tolist() == [1.0, 1.0, 1.0] and plain.tolist() == [-1.0, -1.0]


# --- polyak.load into a LossScaleOptimizer: a refused load built the inner optimizer ---------------
def test_a_refused_load_into_a_loss_scale_optimizer_builds_nothing(tmp_path):
    weights = [np.zeros(3, np.float32)]
    plain = polyak.SGD(momentum=0.9)
    plain.apply([np.ones(3, np.float32)], weights)
    polyak.save(tmp_path / "plain.ckpt", plain, weights)
    lso = optimizers.LossScaleOptimizer(polyak.SGD(momentum=0.9))
    inner_before = [v.numpy().copy() for v in lso.inner_optimizer.variables]
    own_before = [v.numpy().copy() for v in lso.variables]
    with pytest.raises(polyak.saving.CheckpointMismatchError, match="Nothing was loaded"):
        polyak.load(tmp_path / "plain.ckpt", lso, variables=[np.zeros(3, np.float32)])
    assert not lso.built and not lso.inner_optimizer.built
    assert lso.inner_optimizer.momentums == [] and not hasattr(lso, "step_counter")
    _assert_same(inner_before, [v.numpy() for v in lso.inner_optimizer.variables])
    _assert_same(own_before, [v.numpy() for v in lso.variables])


def test_a_matching_load_into_an_unbuilt_loss_scale_optimizer_still_builds_it(tmp_path):
    weights = [np.zeros(3, np.float32)]
    saved = optimizers.LossScaleOptimizer(polyak.SGD(momentum=0.9), initial_scale=8.0)
    saved.apply([np.ones(3, np.float32)], weights)
    polyak.save(tmp_path / "lso.ckpt", saved, weights)
    target = optimizers.LossScaleOptimizer(polyak.SGD(momentum=0.9), initial_scale=8.0)
    polyak.load(tmp_path / "lso.ckpt", target, variables=[np.zeros(3, np.float32)])
    assert target.built and target.inner_optimizer.built
    _assert_same([v.numpy() for v in saved.variables], [v.numpy() for v in target.variables])


# --- the missing-gradient warning spoke of `model.compile()`, which polyak does not have ----------------
def test_the_missing_gradient_warning_names_the_variables_and_fits_polyak():
    kernel, bias = polyak.Variable(np.zeros(2, np.float32), name="kernel"), polyak.Variable(np.zeros(2), name="b")
    with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \['b'\]") as record:
        polyak.SGD().apply([np.ones(2, np.float32), None], [kernel, bias])
    message = str(record[0].message)
    assert "model.compile" not in message and "loss depends on them" in message


# --- a NumPy scalar as a weight was called a "read-only array" ---------------------------------------
def test_a_numpy_scalar_weight_is_called_a_scalar_with_what_to_pass_instead():
    opt = polyak.SGD()
    with pytest.raises(ValueError) as info:
        opt.apply([np.float32(1.0)], [np.float32(1.0)])
    message = str(info.value)
    assert "'variable_0' is a NumPy scalar" in message and "read-only" not in message
    assert "np.array(1.0, np.float32)" in message and "polyak.Variable" in message
    assert not opt.built
    w = np.array(1.0, np.float32)  # what the message suggests works
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.apply([np.float32(1.0)], [w])
    assert float(w) == pytest.approx(0.99)


# --- polyak.Variable.__doc__ was None: the docstring sat after a class attribute ---------------------
def test_variable_has_its_docstring():
    assert polyak.Variable.__doc__ is not None
    assert polyak.Variable.__doc__.startswith("A named array that the optimizer reads and assigns.")


# --- the tier is chosen after validation -----------------------------------------------------------
@pytest.mark.parametrize("tier", ["reference", "cpu_fused"])
def test_a_read_only_array_given_to_build_is_refused_by_apply_on_every_tier(tier):
    w = np.ones(3, np.float32)
    w.flags.writeable = False
    opt = polyak.SGD(learning_rate=1.0, momentum=0.9)
    opt.build([w])
    db.use_tier(opt, tier)
    with pytest.raises(ValueError, match="'variable_0' cannot be updated in place: it is a read-only array"):
        opt.apply([np.ones(3, np.float32)], [w])
    assert w.tolist() == [1.0, 1.0, 1.0] and int(opt.iterations.numpy()) == 0


def test_a_tensor_subclass_takes_the_reference_tier_instead_of_crashing_the_fused_one():
    class Tagged(torch.Tensor):
        pass

    w = torch.ones(3).as_subclass(Tagged)
    opt = polyak.SGD(learning_rate=0.5, momentum=0.9)
    opt.apply([torch.ones(3)], [w])
    assert db.tier_that_ran(opt) == "reference" and w.tolist() == [0.5, 0.5, 0.5]


# --- a built, stepped optimizer pickles and deep-copies, and continues the same trajectory ----------
@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("copy_with", ["pickle", "deepcopy"])
def test_a_stepped_optimizer_survives_pickle_and_deepcopy(backend, copy_with):
    import copy
    import pickle

    def weights():
        values = [np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)]
        return values if backend == "numpy" else [torch.tensor(v) for v in values]

    def grads(k):
        values = [np.full((2, 3), 0.1 * (k + 1), np.float32), np.full(4, -0.2, np.float32)]
        return values if backend == "numpy" else [torch.tensor(v) for v in values]

    make = dict(learning_rate=0.1, momentum=0.9, use_ema=True, global_clipnorm=1.0, gradient_accumulation_steps=2)
    straight_w, opt = weights(), polyak.SGD(**make)
    for k in range(6):
        opt.apply(grads(k), straight_w)
    assert db.tier_that_ran(opt) == "cpu_fused"

    w, first = weights(), polyak.SGD(**make)
    for k in range(3):
        first.apply(grads(k), w)
    state = (first, w)
    second, w = pickle.loads(pickle.dumps(state)) if copy_with == "pickle" else copy.deepcopy(state)
    for k in range(3, 6):
        second.apply(grads(k), w)
    for a, b in zip(list(w) + [v.numpy() for v in second.variables],
                    list(straight_w) + [v.numpy() for v in opt.variables]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- a pytree leaf's state is keyed by the leaf's key path, as its variables are named --------------
def test_checkpoint_keys_of_a_pytree_follow_the_leaves_key_paths():
    jnp = pytest.importorskip("jax.numpy")
    from polyak.saving import names

    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
    opt = polyak.SGD(0.1, momentum=0.9, use_ema=True)
    opt.build(params)
    keys = names.optimizer_keys(opt)
    assert [v.name for v in opt.variables][-1] == "dense_kernel_momentum"
    assert keys[-1] == "optimizer/dense/kernel/momentum" and "optimizer/dense/bias/average" in keys
