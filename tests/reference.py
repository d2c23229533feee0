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

import optimizer_db  # noqa: E402
import polyak  # noqa: E402
from polyak import backends as polyak_backends  # noqa: E402

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
    #: "normal" draws; "exact-squares": multiples of 3/8 (at most 6), whose squares, their sums
    #: in any order and a mean over 3 accumulated steps are exact, so a norm is the same
    #: number however it is summed
    gradients: str = "normal"


def scenario(config, **run):
    """The run of an ``optimizer_db.Config`` (``run``: dtype, steps, seed)."""
    return Scenario(options=dict(config.options), schedule=config.schedule, exclude=config.exclude,
                    none_gradient_every=config.none_gradient_every, **run)


def weights_and_gradients(scenario):
    rng = np.random.default_rng(scenario.seed)
    dtype = np.dtype(scenario.dtype)
    weights = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    grads = []
    for step in range(scenario.steps):
        if scenario.gradients == "exact-squares":
            g = [(rng.integers(-16, 17, size=s) * 0.375).astype(dtype) for s in SHAPES.values()]
        else:
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


def _record(opt, variables):
    return (
        [np.array(polyak_backends.host_array(getattr(v, "value", v), transfer=True)) for v in variables],
        [np.array(v.numpy()) for v in opt.variables],
        int(np.asarray(opt.iterations)),
        float(np.asarray(opt.learning_rate)),
    )


def trajectory(module, scenario, backend="numpy", tier=None):
    """Per step: (weights, optimizer variables, iterations, learning rate), as NumPy.

    For polyak, ``backend`` picks the arrays: NumPy arrays in Variables; torch
    ``nn.Parameter`` objects updated in place (Variables holding tensors when the
    scenario excludes weights by name, which needs names); JAX arrays in Variables,
    stepped by ``jax.jit(opt.stateless_apply)`` and assigned back. ``tier``: the polyak
    tier asked for (``optimizer_db.use_tier``); None leaves polyak's own choice.
    """
    weights, grads = weights_and_gradients(scenario)
    names = [path.split("/")[1] for path in weights]
    convert = ARRAYS[backend if module is polyak else "numpy"]
    if module is polyak and backend == "torch" and scenario.exclude != "names":
        import torch

        variables = [torch.nn.Parameter(convert(w)) for w in weights.values()]
    else:
        variables = [module.Variable(convert(w), dtype=scenario.dtype, name=n) for n, w in zip(names, weights.values())]
    opt = _optimizer(module, scenario, variables)
    if module is polyak and tier is not None:
        optimizer_db.use_tier(opt, tier)
    history = []
    if module is polyak and backend == "jax":
        import jax

        opt.build(variables)
        step = jax.jit(opt.stateless_apply)
        # committed to the device as jit's outputs are, so the second call reuses the first compile
        device = jax.devices()[0]
        params, values = ([jax.device_put(v.value, device) for v in vs] for vs in (variables, opt.variables))
        for g in grads:
            params, values = step(values, [None if x is None else convert(x) for x in g], params)
            for variable, value in zip(variables + opt.variables, params + values):
                variable.assign(value)
            history.append(_record(opt, variables))
        return history, opt
    for g in grads:
        opt.apply([None if x is None else convert(x) for x in g], variables)
        history.append(_record(opt, variables))
    return history, opt


def _torch_array(x):
    import torch

    x = np.array(x)
    if str(x.dtype) == "bfloat16":  # torch reads no ml_dtypes arrays; bfloat16 -> float32 -> bfloat16 is exact
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(x)


def _jax_array(x):
    import jax.numpy as jnp

    return jnp.asarray(x)


ARRAYS = {"numpy": np.asarray, "torch": _torch_array, "jax": _jax_array}
_KERAS_RUNS = {}


def keras_trajectory(scenario):
    """Keras's run of ``scenario``, computed once and shared by the backends."""
    key = repr(scenario)
    if key not in _KERAS_RUNS:
        _KERAS_RUNS[key] = trajectory(keras, scenario)
    return _KERAS_RUNS[key]


def assert_same_trajectory(scenario, rtol=None, backend="numpy", tier=None, exact=False, ulps=None):
    """Assert every weight, optimizer variable, ``iterations`` and learning rate agree after every step.

    ``exact``: every weight and optimizer variable equal (``assert_array_equal``), float
    entries of the same dtype; else within ``rtol`` (``atol = rtol / 10``), and within
    ``ulps`` units in the last place when given."""
    rtol = rtol if rtol is not None else (1e-6 if scenario.dtype == "float32" else 1e-12)
    expected, keras_opt = keras_trajectory(scenario)
    actual, polyak_opt = trajectory(polyak, scenario, backend, tier)
    named = [v.name for v in polyak_opt._trainable_variables if isinstance(v, polyak.Variable)]
    if named:
        assert [v.path for v in polyak_opt.variables] == [v.path.replace(keras_opt.name, polyak_opt.name, 1)
                                                         for v in keras_opt.variables]
    else:
        assert len(polyak_opt.variables) == len(keras_opt.variables)
    assert len(actual) == len(expected) == scenario.steps
    for step, (want, got) in enumerate(zip(expected, actual)):
        for kind, w, g in (("weight", want[0], got[0]), ("optimizer variable", want[1], got[1])):
            assert len(w) == len(g), f"step {step}: {kind} count"
            for k, (a, b) in enumerate(zip(w, g)):
                what = f"step {step}: {kind} {k} ({backend}, {scenario})"
                if exact:
                    assert a.dtype.kind not in "f" or b.dtype == a.dtype, f"{what}: dtype {b.dtype} != {a.dtype}"
                    np.testing.assert_array_equal(b, a, err_msg=what)
                    continue
                np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * 1e-1, err_msg=what)
                if ulps is not None and a.dtype.kind == "f":  # the counters are compared above
                    distance = optimizer_db.ulp_distance(b, a)
                    assert distance <= ulps, f"{what}: {distance} ulps apart (at most {ulps})"
        assert got[2] == want[2], f"step {step}: iterations"
        np.testing.assert_allclose(got[3], want[3], rtol=max(rtol, 1e-7), err_msg=f"step {step}: learning rate")
