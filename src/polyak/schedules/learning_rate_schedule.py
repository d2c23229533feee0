"""The Keras schedule classes: validated arguments and configs around ``functions``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from polyak import reprs, serialization, validation
from polyak.backends import namespace_for
from polyak.schedules import functions
from polyak.variable import Variable

if TYPE_CHECKING:
    from typing import Self

    from polyak.annotations import Array, Scalar

_MODULE = "keras.optimizers.schedules"


@serialization.base_class("schedule")
class LearningRateSchedule:
    """A learning rate as a function of the optimizer step.

    Subclasses implement ``__call__(self, step)`` returning a scalar, and
    ``get_config()`` to be serializable. The optimizer calls the schedule with
    its raw step count (before gradient accumulation divides it).
    """

    def __call__(self, step: Array) -> Array:
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override `__call__(self, step)`."
        )

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override `get_config()` "
            "in order to be serializable."
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(**config)

    def __repr__(self) -> str:
        """The call that makes this schedule, with the arguments of its config that are not their
        default: ``ExponentialDecay(initial_learning_rate=0.1, decay_steps=100, decay_rate=0.9)``."""
        try:
            config = self.get_config()
        except NotImplementedError:  # a subclass without a config: Python's repr
            return object.__repr__(self)
        return reprs.call_repr(self, config)

    def _evaluate(self, function, step, *args):
        xp = namespace_for(step)
        with np.errstate(all="ignore"):
            return function(xp, step, *args)


def _read(value):
    """The value now of a starting rate: a Variable is read at every call, as Keras does."""
    if isinstance(value, Variable):
        value = value.value
    if hasattr(value, "detach"):  # a torch tensor, possibly on an accelerator
        value = value.detach().cpu().numpy()
    return value


def _starting_rate(name, value):
    """Check a starting rate: a real number, or a 0-d array, tensor or polyak.Variable
    holding one (kept as given, like Keras)."""
    validation.real(name, _read(value))
    return value


def _rate_now(value):
    return float(_read(value))


def _config_value(value):
    """A Variable is written as its value now; an array stays as given, as in Keras's config."""
    return _rate_now(value) if isinstance(value, Variable) else value


def _positive_steps(name, value):
    validation.real(name, value, low=0, low_open=True)
    return value


class _RateDecay(LearningRateSchedule):
    """A schedule of ``(initial_learning_rate, decay_steps, decay_rate, staircase)``."""

    _function = None  #: one of ``functions``' decays, taking those four arguments

    def __init__(self, initial_learning_rate: Scalar, decay_steps: float, decay_rate: float, staircase: bool = False,
                 name: str | None = None) -> None:
        self.initial_learning_rate = _starting_rate("initial_learning_rate", initial_learning_rate)
        validation.real("decay_rate", decay_rate)
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.decay_rate = decay_rate
        self.staircase = validation.boolean("staircase", staircase)
        self.name = name or type(self).__name__

    def __call__(self, step: Array) -> Array:
        return self._evaluate(
            type(self)._function, step, _rate_now(self.initial_learning_rate), self.decay_steps, self.decay_rate,
            self.staircase,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": _config_value(self.initial_learning_rate), "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name,
        }


@serialization.builtin("schedule", _MODULE)
class ExponentialDecay(_RateDecay):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (floored exponent if ``staircase``)."""

    _function = staticmethod(functions.exponential_decay)

    def __init__(self, initial_learning_rate: Scalar, decay_steps: float, decay_rate: float, staircase: bool = False,
                 name: str = "ExponentialDecay") -> None:
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)


@serialization.builtin("schedule", _MODULE)
class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ..., ``values[-1]`` after ``boundaries[-1]``."""

    def __init__(self, boundaries: Sequence[float], values: Sequence[float], name: str = "PiecewiseConstant") -> None:
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. Received: "
                f"boundaries={boundaries} of length {len(boundaries)}, and values={values} of length {len(values)}."
            )
        for i, value in enumerate(values):
            validation.real(f"values[{i}]", value)
        for i, bound in enumerate(boundaries):
            if abs(validation.real(f"boundaries[{i}]", bound)) > validation.INT64_MAX:
                validation.fail(f"boundaries[{i}]", bound, "within int64's range (the step is an int64)")
        if any(not low < high for low, high in zip(boundaries, boundaries[1:])):
            validation.fail("boundaries", boundaries, "strictly increasing")
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step: Array) -> Array:
        return self._evaluate(functions.piecewise_constant, step, self.boundaries, self.values)

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


@serialization.builtin("schedule", _MODULE)
class PolynomialDecay(LearningRateSchedule):
    """``(lr0 - end) * (1 - min(step, decay_steps) / decay_steps) ** power + end``; cycles if ``cycle``."""

    def __init__(self, initial_learning_rate: Scalar, decay_steps: float, end_learning_rate: float = 0.0001,
                 power: float = 1.0, cycle: bool = False, name: str = "PolynomialDecay") -> None:
        self.initial_learning_rate = _starting_rate("initial_learning_rate", initial_learning_rate)
        validation.real("end_learning_rate", end_learning_rate)
        validation.real("power", power)
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = validation.boolean("cycle", cycle)
        self.name = name

    def __call__(self, step: Array) -> Array:
        return self._evaluate(
            functions.polynomial_decay, step, _rate_now(self.initial_learning_rate), self.decay_steps,
            self.end_learning_rate, self.power, self.cycle,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": _config_value(self.initial_learning_rate), "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate, "power": self.power, "cycle": self.cycle,
            "name": self.name,
        }


@serialization.builtin("schedule", _MODULE)
class InverseTimeDecay(_RateDecay):
    """``lr0 / (1 + decay_rate * step / decay_steps)`` (floored ratio if ``staircase``)."""

    _function = staticmethod(functions.inverse_time_decay)

    def __init__(self, initial_learning_rate: Scalar, decay_steps: float, decay_rate: float, staircase: bool = False,
                 name: str = "InverseTimeDecay") -> None:
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)


@serialization.builtin("schedule", _MODULE)
class CosineDecay(LearningRateSchedule):
    """Optional linear warmup to ``warmup_target`` over ``warmup_steps``, then cosine decay
    over ``decay_steps`` down to ``alpha`` times the peak (SGDR without restarts)."""

    def __init__(self, initial_learning_rate: Scalar, decay_steps: float, alpha: float = 0.0, name: str = "CosineDecay",
                 warmup_target: float | None = None, warmup_steps: float = 0) -> None:
        self.initial_learning_rate = _starting_rate("initial_learning_rate", initial_learning_rate)
        validation.real("alpha", alpha)
        validation.real("warmup_target", warmup_target, optional=True)
        validation.real("warmup_steps", warmup_steps, low=0)
        self.decay_steps = _positive_steps("decay_steps", decay_steps)
        self.alpha = alpha
        self.name = name
        self.warmup_steps = warmup_steps
        self.warmup_target = warmup_target

    def __call__(self, step: Array) -> Array:
        return self._evaluate(
            functions.cosine_decay, step, _rate_now(self.initial_learning_rate), self.decay_steps, self.alpha,
            self.warmup_target, self.warmup_steps,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": _config_value(self.initial_learning_rate), "decay_steps": self.decay_steps,
            "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


@serialization.builtin("schedule", _MODULE)
class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts: period ``i`` lasts ``first_decay_steps * t_mul**i``
    steps and starts at ``initial_learning_rate * m_mul**i``."""

    def __init__(self, initial_learning_rate: Scalar, first_decay_steps: float, t_mul: float = 2.0, m_mul: float = 1.0,
                 alpha: float = 0.0, name: str = "SGDRDecay") -> None:
        self.initial_learning_rate = _starting_rate("initial_learning_rate", initial_learning_rate)
        validation.real("t_mul", t_mul, low=0, low_open=True)
        validation.real("m_mul", m_mul)
        validation.real("alpha", alpha)
        self.first_decay_steps = _positive_steps("first_decay_steps", first_decay_steps)
        self._t_mul = t_mul
        self._m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step: Array) -> Array:
        return self._evaluate(
            functions.cosine_decay_restarts, step, _rate_now(self.initial_learning_rate), self.first_decay_steps,
            self._t_mul, self._m_mul, self.alpha,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": _config_value(self.initial_learning_rate), "first_decay_steps": self.first_decay_steps,
            "t_mul": self._t_mul, "m_mul": self._m_mul, "alpha": self.alpha, "name": self.name,
        }


def serialize(learning_rate_schedule: LearningRateSchedule) -> dict[str, Any]:
    """The Keras-format dict of a schedule."""
    return serialization.serialize(learning_rate_schedule)


def deserialize(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> LearningRateSchedule:
    """A schedule from its Keras-format dict (built-in or registered classes only)."""
    return serialization.deserialize("schedule", config, custom_objects)
