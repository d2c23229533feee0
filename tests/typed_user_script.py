"""A newcomer's script, type-checked by tests/test_newcomer.py with ``mypy --strict``.

It touches what a user touches first: ``polyak.SGD`` on NumPy arrays with a schedule, ``apply``
and ``stateless_apply``, configs, checkpoints, ``polyak.Variable``, ``polyak.torch.SGD`` on a
small ``nn.Module`` and ``polyak.optax.sgd`` (optax ships no types: its objects are ``Any``). ``main`` runs it (the test does that too).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

import polyak
import polyak.optax
import polyak.torch
from polyak import schedules


def numpy_steps(directory: str) -> float:
    weights = [np.array([1.0, 2.0], np.float32), np.zeros(3, np.float32)]
    schedule = schedules.ExponentialDecay(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5)
    opt = polyak.SGD(learning_rate=schedule, momentum=0.9, nesterov=True, global_clipnorm=1.0)
    grads = [np.ones(2, np.float32), np.ones(3, np.float32)]
    opt.apply(grads, weights)
    opt.apply_gradients(zip(grads, weights))
    values = [v.value for v in opt.variables]
    new_weights, new_values = opt.stateless_apply(values, grads, weights)
    copy = polyak.SGD.from_config(opt.get_config())
    copy.build(weights)
    path = os.path.join(directory, "sgd.safetensors")
    polyak.save(path, opt, variables=weights)
    loaded = polyak.load(path, variables=[w.copy() for w in weights])
    assert isinstance(loaded, polyak.Optimizer) and repr(copy) == repr(opt)
    return float(new_weights[0][0]) + float(len(new_values))


def variable_steps() -> int:
    w = polyak.Variable(np.ones(2), name="w")
    opt = polyak.LossScaleOptimizer(polyak.SGD(learning_rate=0.01))
    opt.apply([np.ones(2, np.float32)], [w])
    rate: Any = opt.learning_rate
    return int(opt.iterations.numpy()) + int(w.numpy()[0] < 1) + int(float(rate) > 0)


def torch_steps() -> float:
    model = torch.nn.Linear(2, 1)
    opt = polyak.torch.SGD(model.parameters(), lr=0.1, momentum=0.9, use_ema=True)
    loss = model(torch.ones(4, 2)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    state: dict[str, Any] = opt.state_dict()
    opt.load_state_dict(state)
    return float(loss.detach())


def optax_steps() -> float:
    params = {"w": jnp.array([1.0, 2.0])}
    tx = polyak.optax.sgd(0.1, momentum=0.9)
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.ones(2)}, state, params)
    new = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    return float(np.asarray(new["w"])[0])


def main(directory: str) -> None:
    print(numpy_steps(directory), variable_steps(), torch_steps(), optax_steps())


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        main(folder)
