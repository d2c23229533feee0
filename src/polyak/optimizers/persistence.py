"""Config and state in and out of an optimizer, in Keras's formats.

``get_config``/``from_config`` round-trip the hyperparameters;
``save_own_variables``/``load_own_variables`` write and read the optimizer
variables under the keys ``"0"``, ``"1"``, ... in ``variables`` order, so a
store written by Keras loads here and the other way round.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Mapping, MutableMapping, Sequence

from polyak import arguments, naming, options, rates, reprs, serialization
from polyak.schedules import deserialize as deserialize_schedule
from polyak.variable import Variable

if TYPE_CHECKING:
    from typing import Self

    from polyak.annotations import Array


class StatePersistence:
    """Mixin for :class:`polyak.optimizers.Optimizer`."""

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-compatible dict."""
        lr = self._learning_rate
        config = {"name": self.name, "learning_rate": rates.config(lr.numpy() if isinstance(lr, Variable) else lr)}
        config.update(options.config_of(options.BASE, lambda name: getattr(self, name)))
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Self:
        """An optimizer from ``get_config()`` output. A schedule or a function as the
        learning rate is loaded only if polyak ships it or it is registered."""
        config = dict(config)
        learning_rate = config.get("learning_rate")
        if isinstance(learning_rate, dict) and learning_rate.get("class_name") in ("function", "__lambda__"):
            config["learning_rate"] = serialization.deserialize_function(learning_rate, custom_objects)
        elif isinstance(learning_rate, dict):
            config["learning_rate"] = deserialize_schedule(learning_rate, custom_objects)
        return cls(**config)

    def __repr__(self) -> str:
        """The call that makes this optimizer, with the arguments that are not their default:
        ``SGD(learning_rate=0.1, momentum=0.9)`` (a schedule or callable rate by its repr)."""
        return reprs.call_repr(self, self._repr_arguments())

    def _repr_arguments(self) -> dict[str, Any]:
        """The constructor's keywords and their values now (read from the same-named attributes)."""
        from polyak.optimizers.base import Optimizer  # which imports this module

        values = {}
        for key in arguments.accepted_keywords(type(self), Optimizer):
            if key == "learning_rate":
                lr = self._learning_rate
                values[key] = reprs.float32(lr.numpy()) if isinstance(lr, Variable) else lr
            elif key == "name":
                values[key] = None if naming.is_auto_name(self.name, type(self).__name__) else self.name
            elif key in vars(self):
                values[key] = vars(self)[key]
        return values

    def _checked_values(self, values, what):
        """``values`` as arrays after checking they match ``variables`` one to one in shape."""
        if len(values) != len(self.variables):
            raise ValueError(
                f"{what} must hold {len(self.variables)} values, one per optimizer variable. "
                f"Received: {len(values)} values"
            )
        arrays = [self._backend.asarray(v) for v in values]
        for variable, value in zip(self.variables, arrays):
            if tuple(value.shape) != variable.shape:
                raise ValueError(
                    f"Optimizer variable {variable.path!r} has shape {variable.shape} not compatible with "
                    f"provided weight shape {tuple(value.shape)}."
                )
        return arrays

    def set_weights(self, weights: Sequence[Array]) -> None:
        """Set every optimizer variable from a list of arrays, in ``variables`` order."""
        if not self.built:
            raise ValueError(
                "You are calling `set_weights()` on an optimizer that has not yet been built. Please call "
                "`optimizer.build(trainable_variables)` to create the optimizer weights before calling "
                "`set_weights()`."
            )
        for variable, value in zip(self.variables, self._checked_values(list(weights), "`weights`")):
            variable.assign(value)

    def save_own_variables(self, store: MutableMapping[str, Any]) -> None:
        """Write every optimizer variable to ``store[str(i)]`` as a NumPy array."""
        for i, variable in enumerate(self.variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store: Mapping[str, Any]) -> None:
        """Read what ``save_own_variables`` wrote. A store with another variable count is
        skipped with a warning, as Keras does; a shape mismatch raises before any write."""
        if len(store.keys()) != len(self.variables):
            msg = (
                f"Skipping variable loading for optimizer '{self.name}', because it has {len(self.variables)} "
                f"variables whereas the saved optimizer has {len(store.keys())} variables. "
            )
            if len(self.variables) == 0 or not self.built:
                msg += "This is likely because the optimizer has not been called/built yet."
            warnings.warn(msg, stacklevel=2)
            return
        values = self._checked_values([store[str(i)] for i in range(len(self.variables))], "The store")
        for variable, value in zip(self.variables, values):
            variable.assign(value)
