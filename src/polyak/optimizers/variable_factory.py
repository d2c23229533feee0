"""Creating optimizer variables: Keras's ``add_variable`` family, master copies, decay exclusions."""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from polyak import options
from polyak.backends import backend_for
from polyak.optimizers import parameters as params_mod
from polyak.variable import Variable

_INITIALIZERS = ("zeros", "ones")


class VariableFactory:
    """Mixin for :class:`polyak.optimizers.Optimizer`: makes and tracks its variables."""

    def _track(self, variable):
        """Append ``variable`` to Keras's variables, ahead of polyak's own, on the optimizer's backend."""
        variable._move_to(self._backend)
        self._variables.insert(len(self._variables) - self._polyak_only, variable)
        return variable

    @staticmethod
    def _is_16_bit(value):
        return str(value.dtype) in ("float16", "bfloat16", "torch.float16", "torch.bfloat16")

    def _add_master(self, reference):
        value = params_mod.value_of(reference)
        if not self._is_16_bit(value):
            return None
        bk = backend_for([value])
        path = self._trainable_paths[self._trainable_variables_indices[id(reference)]].replace("/", "_")
        return self._track(Variable(bk.cast(value, bk.float32), trainable=False, name=f"{path}_master",
                                    _scope=self.name))

    def add_variable(self, shape: Sequence[int], initializer: Any = "zeros", dtype: Any = None,
                     aggregation: str = "none", layout: Any = None, name: str | None = None) -> Variable:
        """Create and track an optimizer variable (``initializer``: "zeros", "ones", an array or callable)."""
        return self._track(Variable(initializer, shape=shape, dtype=dtype or "float32", trainable=False,
                                    name=name, _scope=self.name))

    def add_variable_from_reference(self, reference_variable: Any, name: str | None = None,
                                    initializer: Any = "zeros") -> Variable:
        """An optimizer variable shaped like ``reference_variable``, named ``{path}_{name}``."""
        index = self._trainable_variables_indices.get(id(reference_variable))
        path = self._trainable_paths[index] if index is not None else params_mod.path_of(reference_variable,
                                                                                             "variable_0")
        path = path.replace("/", "_")
        value = params_mod.value_of(reference_variable)
        bk = backend_for([value])
        if self.master_weights and self._is_16_bit(value):
            value = bk.cast(value, bk.float32)
        if initializer in _INITIALIZERS:
            initial = bk.zeros_like(value) if initializer == "zeros" else bk.zeros_like(value) + 1
        else:
            initial = initializer
        return self._track(Variable(initial, shape=tuple(value.shape), dtype=value.dtype, trainable=False,
                                    name=f"{path}_{name or 'var'}", _scope=self.name))

    def add_optimizer_variables(self, trainable_variables: Iterable[Any], name: str | Sequence[str],
                                initializer: Any = "zeros") -> Any:
        """One optimizer variable per weight (``None`` for ``overwrite_with_gradient`` weights).

        With a list of names, returns a tuple of lists, interleaved per weight as Keras does.
        """
        names = [name] if isinstance(name, str) else list(name)
        inits = [initializer] * len(names) if isinstance(initializer, str) or not isinstance(initializer, (list, tuple)) \
            else list(initializer)
        if len(names) != len(inits):
            raise ValueError(
                "The number of provided names must match the number of provided initializers. "
                f"Received name={name!r}, initializer={initializer!r}"
            )
        out = tuple([] for _ in names)
        for v in trainable_variables:
            for k, (slot_name, init) in enumerate(zip(names, inits)):
                skip = getattr(v, "overwrite_with_gradient", False)
                out[k].append(None if skip else self.add_variable_from_reference(v, slot_name, init))
        return out[0] if isinstance(name, str) else out

    def exclude_from_weight_decay(self, var_list: Iterable[Any] | None = None,
                                  var_names: Iterable[str] | None = None) -> None:
        """Exclude weights from weight decay: those in ``var_list``, and those whose
        name contains any string of ``var_names`` (a regex search). Call before ``build``."""
        if self.built:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before the optimizer is built.")
        self._exclude_ids = frozenset(id(v) for v in (var_list or ()))
        self._exclude_pattern = options.exclusion_pattern(var_names)

    def _decay_exclusions(self) -> tuple[list[str], str | None]:
        """``(paths, pattern)``: the built weights excluded by ``var_list``, by path, and the regex
        that ``var_names`` made (None for none), as a checkpoint records them."""
        if self._exclude_ids and not self.built:
            raise ValueError(
                f"Optimizer '{self.name}' excludes {len(self._exclude_ids)} weight(s) from weight decay by "
                "`var_list` and is not built, so they have no names to save them by. Build it (or apply a "
                "step) first, or exclude them by `var_names`."
            )
        paths = [p for v, p in zip(self._trainable_variables, self._trainable_paths) if id(v) in self._exclude_ids]
        return paths, None if self._exclude_pattern is None else self._exclude_pattern.pattern

    def _restore_decay_exclusions(self, weights: Iterable[Any], pattern: str | None) -> None:
        """Exclude ``weights`` and the names that ``pattern`` finds, built or not (a checkpoint's
        exclusions, checked beforehand)."""
        self._exclude_ids = frozenset(id(v) for v in weights)
        self._exclude_pattern = None if pattern is None else re.compile(pattern)
        self._per_weight_cache = (None, None)

    def _has_decay_exclusions(self) -> bool:
        return bool(self._exclude_ids) or self._exclude_pattern is not None

    def _use_weight_decay(self, variable):
        if id(variable) in self._exclude_ids:
            return False
        index = self._trainable_variables_indices.get(id(variable))
        name = self._trainable_names[index] if index is not None else params_mod.name_of(variable, "variable_0")
        return self._exclude_pattern is None or self._exclude_pattern.search(name) is None

    def _get_variable_index(self, variable):
        return self._trainable_variables_indices[id(variable)]
