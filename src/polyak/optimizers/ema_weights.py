"""The weights' moving averages, swapped in and out: ``finalize_variable_values``, ``ema_weights``."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from polyak.optimizers import parameters as params_mod
from polyak.optimizers.state_roles import AVERAGE


class EmaWeights:
    """Mixin for :class:`polyak.optimizers.Optimizer` (which keeps the averages with ``use_ema``)."""

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        """With EMA, set the weights in ``var_list`` to their moving averages."""
        if not self.use_ema:
            return
        var_list = self._checked_ema_targets(var_list)
        for variable, average in zip(var_list, self.state_roles.role(AVERAGE)):
            if average is not None:
                params_mod.write(variable, average.value, self._backend)

    def _checked_ema_targets(self, var_list):
        var_list = list(var_list)
        if len(var_list) != len(self.state_roles.role(AVERAGE)):
            raise ValueError(
                f"The length of model variables ({len(var_list)}) to override does not match the length of "
                f"model variables stored in the optimizer ({len(self.state_roles.role(AVERAGE))}). Please check if the "
                "optimizer was called on your model."
            )
        return var_list

    @contextlib.contextmanager
    def ema_weights(self, var_list: Sequence[Any] | None = None) -> Iterator[None]:
        """Inside the block the weights hold their moving averages; on leaving it,
        also by an exception, they hold their raw values again, bit for bit.

        ``var_list`` defaults to the weights the optimizer was built on. Before
        the first update the averages are zeros, as in Keras. Not in Keras,
        which only has the one-way ``finalize_variable_values``.

        Example::

            >>> import numpy as np, polyak
            >>> w = np.array([1.0])
            >>> opt = polyak.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5)
            >>> opt.apply([np.array([1.0])], [w])   # w = 0, average = 0 (a copy on the first update)
            >>> opt.apply([np.array([1.0])], [w])   # w = -1, average = 0.5 * 0 + 0.5 * -1
            >>> with opt.ema_weights():
            ...     print(w)
            [-0.5]
            >>> w
            array([-1.])
        """
        if not self.use_ema:
            raise ValueError(
                "`ema_weights()` needs an optimizer that keeps moving averages. "
                f"Received: use_ema={self.use_ema}"
            )
        if not self.built:
            raise ValueError(
                "`ema_weights()` needs a built optimizer: call `optimizer.build(trainable_variables)` or "
                "`apply` first."
            )
        var_list = self._checked_ema_targets(self._trainable_variables if var_list is None else var_list)
        params_mod.check_parameters(var_list)
        for i, (variable, average) in enumerate(zip(var_list, self.state_roles.role(AVERAGE))):
            shape = tuple(params_mod.value_of(variable).shape)
            if average is not None and shape != average.shape:
                raise ValueError(
                    f"`var_list[{i}]` must have the shape {average.shape} of its average {average.path!r}. "
                    f"Received: shape {shape}"
                )
        raw = [self._backend.copy(params_mod.value_of(v)) for v in var_list]
        try:
            for variable, average in zip(var_list, self.state_roles.role(AVERAGE)):
                if average is not None:
                    params_mod.write(variable, average.value, self._backend)
            yield
        finally:
            for variable, value in zip(var_list, raw):
                params_mod.write(variable, value, self._backend)
