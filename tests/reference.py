"""Run the same scenario through ``keras.optimizers.SGD`` and ``polyak.SGD`` side by side.

A scenario is plain data (constructor keywords, a schedule spec, weights,
gradient streams), turned into Keras objects and polyak objects separately, so
both libraries see the same numbers and nothing is copied from either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "numpy")
import keras  # noqa: E402

import polyak  # noqa: E402

SHAPES = {"dense/kernel": (3, 4), "dense/bias": (4,), "conv/kernel": (2, 3, 2), "norm/gamma": (5,)}


@dataclass
class Scenario:
    options: dict = field(default_factory=dict)  #: SGD keywords, learning_rate a float here
    schedule: tuple | None = None  #: (class name, kwargs) of a schedule both libraries have
    dtype: str = "float32"
    steps: int = 7
    exclude: str | None = None  #: "names" (var_names=["bias"]) or "list" (the bias variable)
    none_gradient_every: int = 0  #: every k-th step, weight 1 gets no gradient
    seed: int = 0


def weights_and_gradients(scenario):
    rng = np.random.default_rng(scenario.seed)
    dtype = np.dtype(scenario.dtype)
    weights = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    grads = []
    for step in range(scenario.steps):
        g = [rng.normal(scale=3.0, size=s).astype(dtype) for s in SHAPES.values()]
        if scenario.none_gradient_every and step % scenario.none_gradient_every == 0:
            g[1] = None
        grads.append(g)
    return weights, grads


def _optimizer(module, scenario, variables):
    options = dict(scenario.options)
    if scenario.schedule is not None:
        name, kwargs = scenario.schedule
        options["learning_rate"] = getattr(module.optimizers.schedules, name)(**kwargs)
    opt = module.optimizers.SGD(**options)
    if scenario.exclude == "names":
        opt.exclude_from_weight_decay(var_names=["bias"])
    elif scenario.exclude == "list":
        opt.exclude_from_weight_decay(var_list=[variables[1]])
    return opt


def trajectory(module, scenario):
    """Per step: (weights, optimizer variables, iterations, learning rate), as NumPy."""
    weights, grads = weights_and_gradients(scenario)
    variables = [module.Variable(w, dtype=scenario.dtype, name=path.split("/")[1]) for path, w in weights.items()]
    opt = _optimizer(module, scenario, variables)
    history = []
    for g in grads:
        opt.apply(g, variables)
        history.append((
            [np.array(v.numpy()) for v in variables],
            [np.array(v.numpy()) for v in opt.variables],
            int(np.asarray(opt.iterations)),
            float(np.asarray(opt.learning_rate)),
        ))
    return history, opt


def assert_same_trajectory(scenario, rtol=None):
    """Assert every weight, optimizer variable, ``iterations`` and learning rate agree after every step."""
    rtol = rtol if rtol is not None else (1e-6 if scenario.dtype == "float32" else 1e-12)
    expected, keras_opt = trajectory(keras, scenario)
    actual, polyak_opt = trajectory(polyak, scenario)
    assert [v.path for v in polyak_opt.variables] == [v.path.replace(keras_opt.name, polyak_opt.name, 1)
                                                     for v in keras_opt.variables]
    for step, (want, got) in enumerate(zip(expected, actual)):
        for kind, w, g in (("weight", want[0], got[0]), ("optimizer variable", want[1], got[1])):
            assert len(w) == len(g), f"step {step}: {kind} count"
            for k, (a, b) in enumerate(zip(w, g)):
                np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * 1e-1,
                                           err_msg=f"step {step}: {kind} {k} ({scenario})")
        assert got[2] == want[2], f"step {step}: iterations"
        np.testing.assert_allclose(got[3], want[3], rtol=1e-7, err_msg=f"step {step}: learning rate")
