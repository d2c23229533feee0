"""The learning rate's three kinds, told apart in one place: a float, a schedule, a callable.

Keras takes a float (kept in a float32 optimizer variable), a ``LearningRateSchedule`` (called
with the raw step count) or a zero-argument callable. Every face and the step ask this module
which one a value is (:func:`varies`), check it (:func:`check`, the options table's check of
``learning_rate`` and of a torch group's ``lr``), turn it into the step's
``learning_rate(iteration, stored)`` (:func:`step_function`) and read it now (:func:`value_at`).

A schedule's or callable's value only exists at the step: :func:`step_function` checks it there
(finite and >= 0, as a float rate is checked at construction) before the step writes anything.
A value that cannot be read without waiting for an accelerator, or that is being traced
(``jax.jit``), passes unchecked: reading it would cost a device sync on every step.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Callable

import numpy as np

from polyak import reprs, schedules, serialization, validation
from polyak.schedules import LearningRateSchedule

#: the smallest number that rounds to inf in float32, the dtype a float rate is kept in
FLOAT32_OVERFLOW = (2 - 2.0**-24) * 2.0**127
#: what a rate must be, in the words of the constructor's error
KINDS = "a float, a LearningRateSchedule, or a callable returning the rate"


def varies(rate: Any) -> bool:
    """Whether ``rate`` is a schedule or a callable (Keras's rates that vary), not a number."""
    return isinstance(rate, LearningRateSchedule) or callable(rate)


def check(name: str, rate: Any) -> Any:
    """``rate`` as given if it varies, else as a float after Keras's checks: a real number,
    finite, >= 0, and finite in float32 (the dtype it is stored in)."""
    if varies(rate):
        return rate
    if not validation.is_real(rate):
        validation.fail(name, rate, KINDS, TypeError)
    value = validation.real(name, rate, low=0)
    if value >= FLOAT32_OVERFLOW:
        validation.fail(name, rate, "finite in float32 (the rate's dtype)")
    return value


def config(rate: Any) -> Any:
    """``rate`` as a config holds it: a float, a schedule's serialized dict, or a function's
    reference (Keras's forms; a lambda is written, with a warning, but never loaded)."""
    if isinstance(rate, LearningRateSchedule):
        return schedules.serialize(rate)
    if callable(rate):
        return serialization.serialize_function(rate)
    return float(rate)


def value_at(rate: Any, iteration: Any) -> Any:
    """A varying rate's value at the raw step count ``iteration``."""
    return rate(iteration) if isinstance(rate, LearningRateSchedule) else rate()


def step_function(rate: Any, name: str = "learning_rate") -> Callable[[Any, Any], Any]:
    """The step's ``learning_rate(iteration, stored)`` for ``rate``: the stored rate for a float
    (or None), else the schedule's or callable's value, checked by :func:`check_value`."""
    if not varies(rate):
        return _stored

    def learning_rate(iteration, stored):
        value = value_at(rate, iteration)
        check_value(name, value, rate, iteration)
        return value

    return learning_rate


def _stored(iteration, stored):
    return stored


def check_value(name: str, value: Any, rate: Any = None, iteration: Any = None) -> None:
    """Refuse a rate computed at the step that is NaN, infinite or negative, naming ``name``,
    the value, and the schedule or callable ``rate`` that returned it at ``iteration``."""
    host = host_number(value)
    if host is None or (math.isfinite(host) and host >= 0):
        return
    if str(getattr(value, "dtype", "")).endswith("float32"):
        host = reprs.float32(host)  # the number as the schedule wrote it (-0.1, not -0.10000000149011612)
    count = None if iteration is None else host_number(iteration)
    source = "" if rate is None else f" (returned by {rate!r}{'' if count is None else f' at step {int(count)}'})"
    raise ValueError(f"`{name}` must be finite and >= 0 at every step, or the step would make the weights NaN or "
                     f"move them uphill; nothing was changed. Received: {name}={host!r}{source}")


def host_number(value: Any) -> float | None:
    """``value`` as a Python float when it is a number on the host (a Python or NumPy number, a
    0-d array on the CPU, a concrete JAX array on the CPU); None when reading it would wait for
    an accelerator, when it is traced, or when it is not one number."""
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic)):
        return float(value) if value.size == 1 and value.dtype.kind in "fiu" else None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.device.type != "cpu" or value.numel() != 1 or value.dtype.is_complex:
            return None
        return float(value.detach().reshape(()).item())
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        if value.size != 1 or any(d.platform != "cpu" for d in value.devices()):
            return None
        return float(np.asarray(value).reshape(()))
    return None
