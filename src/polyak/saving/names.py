"""Stable checkpoint keys: each optimizer variable named after the weight it belongs to.

Keras's own store keys optimizer variables by position (``"0"``, ``"1"``, ...),
so a model whose weights were reordered loads silently wrong. A checkpoint
keys them by the *path of their weight* instead:

* ``optimizer/iteration``, ``optimizer/learning_rate``, ``optimizer/skipped_steps``;
* ``optimizer/{weight path}/{slot}`` for per-weight state, e.g.
  ``optimizer/dense/kernel/momentum``, ``.../average``, ``.../gradient_accumulator``;
* ``optimizer/{name}`` for any other variable (made with ``add_variable``);
* for a ``LossScaleOptimizer``, its own variables as ``optimizer/loss_scale/{name}``, then
  its inner optimizer's keys;
* ``variables/{weight path}`` for the weights' own values.

The optimizer's name is not part of a key, so a checkpoint moves between
optimizers named ``sgd`` and ``sgd_1``. A plain array's path is
``variable_{index}``: name your weights (``polyak.Variable(..., name=...)``)
to have them checked by name rather than by position.
"""

from __future__ import annotations

from polyak.optimizers import parameters

OPTIMIZER = "optimizer/"
WEIGHTS = "variables/"


def _unique(keys, what):
    seen, duplicates = set(), []
    for key in keys:
        if key in seen:
            duplicates.append(key)
        seen.add(key)
    if duplicates:
        raise ValueError(
            f"Two {what} would be saved under the same key: {sorted(set(duplicates))}. Give the weights "
            "distinct names (polyak.Variable(..., name=...)) so each can be found by name when loading."
        )
    return keys


def optimizer_keys(optimizer) -> list[str]:
    """One key per optimizer variable, in ``optimizer.variables`` order."""
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        own = [f"{OPTIMIZER}loss_scale/{v.name}" for v in optimizer._variables]
        return _unique(own + optimizer_keys(inner), "optimizer variables")
    roles = optimizer.state_roles.keys()
    keys = [OPTIMIZER + roles.get(id(v), v.name) for v in optimizer.variables]
    return _unique(keys, "optimizer variables")


def weight_keys(weights) -> list[str]:
    """``variables/{path}`` for each weight (a Variable's path, else ``variable_{index}``)."""
    return _unique([WEIGHTS + parameters.path_of(w, i) for i, w in enumerate(weights)], "weights")
