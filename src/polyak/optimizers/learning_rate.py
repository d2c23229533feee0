"""The learning rate: a float held in an optimizer variable, a schedule of the step, or a callable
(which is which: :mod:`polyak.rates`)."""

from __future__ import annotations

from typing import Any

from polyak import options, rates
from polyak.annotations import LearningRateLike
from polyak.variable import Variable


class LearningRate:
    """Mixin for :class:`polyak.optimizers.Optimizer`: ``learning_rate`` as Keras has it."""

    @property
    def learning_rate(self) -> Any:
        """The current rate: the rate variable, or the schedule at the raw step."""
        lr = self._learning_rate
        if isinstance(lr, Variable):
            return lr
        return rates.value_at(lr, self._iterations.value)

    @learning_rate.setter
    def learning_rate(self, learning_rate: LearningRateLike) -> None:
        learning_rate = options.LEARNING_RATE.check("learning_rate", learning_rate)
        previous = self._learning_rate
        if rates.varies(learning_rate):
            self._learning_rate = learning_rate
            if isinstance(previous, Variable):
                self._variables.remove(previous)
        elif isinstance(previous, Variable):
            previous.assign(learning_rate)
        else:
            raise TypeError(
                f"This optimizer was created with a {type(previous).__name__} as its `learning_rate`, hence "
                "its learning rate is not settable to a number. Create it with a float `learning_rate` to "
                f"set the rate later. Received: learning_rate={learning_rate!r}"
            )

    def _learning_rate_function(self):
        """The step's ``learning_rate(iteration, stored)``; a schedule's or callable's value is
        checked there, before anything is written."""
        lr = self._learning_rate
        return rates.step_function(None if isinstance(lr, Variable) else lr, "learning_rate")
