"""How the weights an optimizer is built on are arranged: Keras's flat list, or a JAX pytree.

Keras passes weights as a flat list. JAX users hold them as pytrees (a dict of
parameters, a Flax or Equinox structure); with JAX arrays an optimizer can be
built on a pytree, and then takes and returns pytrees of that structure. The
step itself always runs on the flat leaves.

A pytree leaf is named by its key path, ``{"dense": {"bias": b}}`` naming ``b``
"dense/bias", so ``exclude_from_weight_decay(var_names=["bias"])`` works on
pytrees; a plain array in a flat list is "variable_{index}".
"""

from __future__ import annotations

import sys

from polyak.backends import kind_of
from polyak.optimizers.parameters import check_not_keras
from polyak.variable import Variable


def _is_leaf(x):
    return x is None or isinstance(x, Variable) or kind_of(x) is not None


def _holds_jax(leaf):
    return kind_of(leaf.value if isinstance(leaf, Variable) else leaf) == "jax"


class Structure:
    """A flat list (``treedef`` None) or a JAX pytree definition, and the leaves' default names."""

    def __init__(self, size, paths=None, treedef=None):
        self._size = size
        self._paths = paths
        self.treedef = treedef

    @property
    def paths(self):
        """Each leaf's name: its key path in a pytree, "variable_{index}" in a flat list."""
        if self._paths is None:
            self._paths = [f"variable_{i}" for i in range(self._size)]
        return self._paths

    def leaves(self, tree, what):
        """``tree``'s leaves in the built order, after checking it has this structure
        (``None`` stands for a missing gradient). A flat list is returned as a list."""
        if self.treedef is None:
            if isinstance(tree, dict):
                raise ValueError(f"`{what}` must be a list, as the weights the optimizer was built on are. "
                                 f"Received: a dict with keys {sorted(map(str, tree))}")
            return list(tree)
        try:
            return self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError):
            raise ValueError(self._mismatch(tree, what)) from None

    def rebuild(self, leaves):
        """``leaves`` arranged like the structure (a list when flat)."""
        return list(leaves) if self.treedef is None else self.treedef.unflatten(leaves)

    def _mismatch(self, tree, what):
        tree_util = sys.modules["jax"].tree_util
        given = [_path_name(p) for p, _ in tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)[0]]
        missing = [p for p in self.paths if p not in given]
        unexpected = [p for p in given if p not in self.paths]
        detail = f"missing {missing}, unexpected {unexpected}" if missing or unexpected else \
            f"expected {self.treedef}, received {tree_util.tree_structure(tree, is_leaf=_is_leaf)}"
        return f"`{what}` must have the structure the optimizer was built on. Received: {detail}"


def _path_name(path):
    return sys.modules["jax"].tree_util.keystr(path, simple=True, separator="/")


class NamedWeights(list):
    """A flat list of weights with their names (torch's ``named_parameters``): an optimizer
    built on it names each weight's variables and checkpoint keys after it."""

    def __init__(self, weights, names):
        super().__init__(weights)
        self.names = [str(name) for name in names]


def flatten(tree, what="trainable_variables"):
    """``(leaves, Structure)`` for a flat sequence of weights or a pytree of JAX arrays."""
    if isinstance(tree, NamedWeights):
        return list(tree), Structure(len(tree), list(tree.names))
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields") and all(_is_leaf(x) for x in tree):
        return list(tree), Structure(len(tree))
    jax = sys.modules.get("jax")
    if jax is not None and (isinstance(tree, (dict, list, tuple)) or not _is_leaf(tree)):
        pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, Variable))
        if pairs and all(_holds_jax(leaf) for _, leaf in pairs):
            return [leaf for _, leaf in pairs], Structure(len(pairs), [_path_name(p) for p, _ in pairs], treedef)
        for i, (_, leaf) in enumerate(pairs):
            check_not_keras(i, leaf)
    if isinstance(tree, dict):
        raise TypeError(
            f"`{what}` must be a list of arrays or polyak.Variables; nested structures (pytrees, such as a dict) "
            f"are accepted for JAX arrays only. Received: {what} of type {type(tree).__name__}"
        )
    leaves = list(tree)
    return leaves, Structure(len(leaves))
