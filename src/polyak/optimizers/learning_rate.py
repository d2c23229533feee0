"""The learning rate: a float held in an optimizer variable, a schedule of the step, or a callable."""

from __future__ import annotations

from typing import Any

from polyak import validation
from polyak.annotations import LearningRateLike
from polyak.schedules import LearningRateSchedule
from polyak.variable import Variable

#: the smallest number that rounds to inf in float32, the dtype the rate is kept in
_FLOAT32_OVERFLOW = (2 - 2.0**-24) * 2.0**127


class LearningRate:
    """Mixin for :class:`polyak.optimizers.Optimizer`: ``learning_rate`` as Keras has it."""

    @staticmethod
    def _check_learning_rate(learning_rate):
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
            return learning_rate
        if not validation.is_real(learning_rate):
            validation.fail(
                "learning_rate", learning_rate,
                "a float, a LearningRateSchedule, or a callable returning the rate", TypeError,
            )
        rate = validation.real("learning_rate", learning_rate, low=0)
        if rate >= _FLOAT32_OVERFLOW:
            validation.fail("learning_rate", learning_rate, "finite in float32 (the rate's dtype)")
        return rate

    @property
    def learning_rate(self) -> Any:
        """The current rate: the rate variable, or the schedule at the raw step."""
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            return lr(self._iterations.value)
        if isinstance(lr, Variable):
            return lr
        return lr()

    @learning_rate.setter
    def learning_rate(self, learning_rate: LearningRateLike) -> None:
        learning_rate = self._check_learning_rate(learning_rate)
        previous = self._learning_rate
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
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
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            return lambda iteration, stored: lr(iteration)
        if isinstance(lr, Variable):
            return lambda iteration, stored: stored
        return lambda iteration, stored: lr()

