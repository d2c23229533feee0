"""Custom optimizers written as Keras's guides write them, run side by side with Keras 3.

The same subclass source is given ``keras.optimizers.Optimizer`` or
``polyak.optimizers.Optimizer`` as its base; Keras runs it with ``apply`` on its NumPy
backend, polyak with ``apply`` and ``stateless_apply`` (jitted under JAX) on NumPy arrays,
torch tensors and JAX arrays, in Variables or plain. Every weight and optimizer variable
must agree after every step, and the optimizer variables' paths must be Keras's.
"""

from __future__ import annotations

import doctest
import pathlib

import numpy as np
import pytest

import keras
import polyak
from polyak import backends
from reference import ARRAYS

NAMES = ("kernel", "bias")
SHAPES = ((3, 4), (4,))
STEPS = 6


def heavy_ball(base):
    """The recipe of the issue: velocities from ``add_variable_from_reference``."""

    class HeavyBall(base):
        def __init__(self, learning_rate=0.05, momentum=0.9, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.momentum = momentum

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self.velocities = [self.add_variable_from_reference(v, "velocity") for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            v = self.velocities[self._get_variable_index(variable)]
            self.assign(v, v * self.momentum - gradient * learning_rate)
            self.assign_add(variable, v)

    return HeavyBall


def counted_moments(base):
    """Variables from ``add_variable``: a moment per weight, a counter shared by all of them,
    and the iteration count read inside ``update_step``."""

    class CountedMoments(base):
        def __init__(self, learning_rate=0.05, beta=0.8, **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.beta = beta

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            self.moments = [self.add_variable(shape=v.shape, dtype=v.dtype, name=f"moment_{i}")
                            for i, v in enumerate(var_list)]
            self.calls = self.add_variable(shape=(), dtype="float32", name="calls")
            self.seen_iteration = self.add_variable(shape=(), dtype="float32", name="seen_iteration")

        def update_step(self, gradient, variable, learning_rate):
            m = self.moments[self._get_variable_index(variable)]
            self.assign(m, m * self.beta + gradient * (1 - self.beta))
            self.assign_add(self.calls, 1.0)
            self.assign(self.seen_iteration, self.iterations)
            self.assign_sub(variable, m * learning_rate / (self.calls * 0.5 + 1.0))

    return CountedMoments


RECIPES = {"heavy_ball": heavy_ball, "counted_moments": counted_moments}
FEATURES = {
    "plain": {},
    "clip_decay_ema_accumulation": dict(global_clipnorm=1.0, weight_decay=0.05, use_ema=True, ema_momentum=0.7,
                                        ema_overwrite_frequency=2, gradient_accumulation_steps=2),
    "loss_scale_clipnorm": dict(loss_scale_factor=8.0, clipnorm=0.5),
}


def _data():
    rng = np.random.default_rng(16)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[rng.normal(scale=2.0, size=s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    grads[3][0] = None  # a missing gradient: user state then rides on the second weight
    return weights, grads


def _numpy(x):
    return np.array(backends.host_array(getattr(x, "value", x), transfer=True))


def keras_run(recipe, options):
    weights, grads = _data()
    variables = [keras.Variable(w, name=n) for w, n in zip(weights, NAMES)]
    opt = RECIPES[recipe](keras.optimizers.Optimizer)(name="custom", **options)
    history = []
    for g in grads:
        opt.apply(g, variables)
        history.append(([_numpy(v) for v in variables], [_numpy(v) for v in opt.variables]))
    return history, [v.path for v in opt.variables]


def polyak_run(recipe, options, arrays, how, named):
    """``how``: "apply", or "stateless" (under ``jax.jit`` for JAX arrays)."""
    weights, grads = _data()
    convert = ARRAYS[arrays]
    if named:
        variables = [polyak.Variable(convert(w), name=n) for w, n in zip(weights, NAMES)]
    else:
        variables = [convert(w) for w in weights]
    opt = RECIPES[recipe](polyak.optimizers.Optimizer)(name="custom", **options)
    history = []
    if how == "apply":
        for g in grads:
            opt.apply([None if x is None else convert(x) for x in g], variables)
            assert opt._last_tier == "reference"
            history.append(([_numpy(v) for v in variables], [_numpy(v) for v in opt.variables]))
        return history, opt
    opt.build(variables)
    step = opt.stateless_apply
    if arrays == "jax":
        import jax

        step = jax.jit(step)
    own = [v.value for v in opt.variables] + [v.value for v in variables if isinstance(v, polyak.Variable)]
    params = [getattr(v, "value", v) for v in variables]
    values = [v.value for v in opt.variables]
    for g in grads:
        inputs = params + values
        given = [_numpy(x) for x in inputs]
        params, values = step(values, [None if x is None else convert(x) for x in g], params)
        for a, b in zip(inputs, given):  # the inputs are left as they were
            np.testing.assert_array_equal(_numpy(a), b)
        history.append(([_numpy(v) for v in params], [_numpy(v) for v in values]))
    # nothing was written, and nothing of a trace stayed behind: every Variable holds its own array
    after = [v.value for v in opt.variables] + [v.value for v in variables if isinstance(v, polyak.Variable)]
    assert all(a is b for a, b in zip(after, own))
    assert opt._bindings is None
    return history, opt


def _assert_same(expected, actual, what):
    for step, ((kw, ko), (pw, po)) in enumerate(zip(expected, actual)):
        for kind, want, got in (("weight", kw, pw), ("optimizer variable", ko, po)):
            assert len(want) == len(got), f"{what}: step {step}: {kind} count"
            for k, (a, b) in enumerate(zip(want, got)):
                if a.dtype.kind == "f":  # (polyak counts in int64, Keras in int32)
                    assert b.dtype == a.dtype, f"{what}: step {step}: {kind} {k} dtype"
                np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-7, err_msg=f"{what}: step {step}: {kind} {k}")


_KERAS = {}


def _keras(recipe, features):
    if (recipe, features) not in _KERAS:
        _KERAS[recipe, features] = keras_run(recipe, FEATURES[features])
    return _KERAS[recipe, features]


pytestmark = pytest.mark.filterwarnings("ignore:Gradients do not exist for variables")

RUNS = [("numpy", "apply", True), ("numpy", "apply", False), ("numpy", "stateless", True),
        ("torch", "apply", True), ("torch", "apply", False), ("torch", "stateless", False),
        ("jax", "stateless", True), ("jax", "stateless", False)]


@pytest.mark.parametrize("features", list(FEATURES))
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("arrays,how,named", RUNS, ids=["-".join(map(str, r)) for r in RUNS])
def test_keras_recipe_matches_keras(recipe, features, arrays, how, named):
    if arrays != "numpy":
        pytest.importorskip(arrays)
    expected, keras_paths = _keras(recipe, features)
    actual, opt = polyak_run(recipe, FEATURES[features], arrays, how, named)
    _assert_same(expected, actual, f"{recipe}, {features}, {arrays} {how}")
    paths = [v.path for v in opt.variables]
    if named:
        assert paths == keras_paths
    else:  # plain arrays are named by position, as in polyak.SGD
        assert paths == [p.replace("kernel", "variable_0").replace("bias", "variable_1") for p in keras_paths]


def test_plain_numpy_run_is_exact():
    """Without the features that sum norms, the NumPy run is Keras's to the last bit."""
    expected, _ = _keras("heavy_ball", "plain")
    actual, _ = polyak_run("heavy_ball", {}, "numpy", "apply", True)
    for (kw, ko), (pw, po) in zip(expected, actual):
        for a, b in zip(kw + ko, pw + po):
            np.testing.assert_array_equal(b, a)


def test_loss_scale_optimizer_wraps_a_keras_style_optimizer():
    weights, grads = _data()
    runs = []
    for module in (keras, polyak):
        variables = [module.Variable(w, name=n) for w, n in zip(weights, NAMES)]
        opt = module.optimizers.LossScaleOptimizer(heavy_ball(module.optimizers.Optimizer)(name="custom"),
                                                   initial_scale=16.0, dynamic_growth_steps=2)
        history = []
        for step, g in enumerate(grads):
            g = [None if x is None else x * 16.0 for x in g]
            if step == 2:
                g[1] = np.full(SHAPES[1], np.inf, np.float32)  # skipped, scale halved
            opt.apply(g, variables)
            history.append(([_numpy(v) for v in variables], [_numpy(v) for v in opt.variables]))
        runs.append(history)
    _assert_same(*runs, "LossScaleOptimizer(HeavyBall)")


def test_the_update_step_of_an_sgd_subclass_is_used():
    """Overriding ``update_step`` on a subclass of SGD replaces SGD's rule, as in Keras."""
    runs = []
    for module in (keras, polyak):
        class HalfSteps(module.optimizers.SGD):
            def update_step(self, gradient, variable, learning_rate):
                self.assign_sub(variable, gradient * learning_rate * 0.5)

        w = module.Variable(np.ones(3, np.float32), name="w")
        HalfSteps(learning_rate=0.1).apply([np.full(3, 2.0, np.float32)], [w])
        runs.append(_numpy(w))
    np.testing.assert_array_equal(runs[1], runs[0])
    np.testing.assert_allclose(runs[1], 0.9)


def test_an_optimizer_without_an_update_says_what_to_implement():
    class Nothing(polyak.optimizers.Optimizer):
        pass

    with pytest.raises(NotImplementedError, match="must implement `update_step`"):
        Nothing(learning_rate=0.1).apply([np.ones(2)], [np.zeros(2)])


def test_variables_are_restored_when_update_step_raises():
    class Failing(heavy_ball(polyak.optimizers.Optimizer)):
        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate)
            raise RuntimeError("boom")

    w = polyak.Variable(np.ones(2, np.float32), name="w")
    opt = Failing()
    opt.build([w])
    own = [w.value] + [v.value for v in opt.variables]
    with pytest.raises(RuntimeError, match="boom"):
        opt.apply([np.ones(2, np.float32)], [w])
    assert all(a is b for a, b in zip([w.value] + [v.value for v in opt.variables], own))
    np.testing.assert_array_equal(w.numpy(), 1.0)
    assert opt._bindings is None and int(opt.iterations) == 0


def test_readme_custom_optimizer_example():
    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    result = doctest.testfile(str(readme), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
