"""What a backend supplies: array kernels and storage, never control flow of its own.

The optimizer's step (``polyak.core``) is written once against this interface.
A backend says how to make and cast arrays, how to branch on a scalar predicate
(on the host when it is there; on a device, or under a JAX trace, by a device-side
select of both branches' values or by ``lax.cond``), how to count
steps without overflowing, and how to write a new value into the storage a
user handed us.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable


class Backend:
    """Array kernels for one kind of array. Subclasses fill in every method."""

    name: str = "abstract"
    #: The array namespace the core's math calls (``numpy``, ``torch`` via
    #: ``array_api_compat``, ``jax.numpy``).
    xp: Any = None
    #: The dtype of the iteration counter.
    counter_dtype: Any = None
    #: The backend's float32 dtype (master copies of 16-bit weights).
    float32: Any = None
    #: Why ``write`` cannot store into a plain array of this kind, and what to do instead.
    unwritable_hint: str = ""
    unwritable_error: type = ValueError

    def owns(self, value) -> bool:
        """Whether ``value`` is an array of this backend."""
        raise NotImplementedError

    def asarray(self, value, dtype=None):
        """``value`` (an array of any kind, a number or a nested list) as an array of this
        backend, on its device; ``dtype`` is a name or a dtype of any kind."""
        raise NotImplementedError

    def convert(self, value, what):
        """An input of the step (a gradient, a value given to ``stateless_apply``) as an
        array of this backend. Arrays of another kind are converted when that costs no
        device transfer (both on the CPU); otherwise a ``TypeError`` whose message starts
        with ``what`` ("The gradient for variable 'w'"). Same-kind arrays on another
        device are a ``ValueError``."""
        raise NotImplementedError

    def cast(self, value, dtype):
        """``value`` as ``dtype``; may return ``value`` itself when it already is."""
        raise NotImplementedError

    def scalar(self, value, dtype):
        """A 0-d array holding ``value`` rounded to ``dtype``."""
        raise NotImplementedError

    def zeros_like(self, value):
        """Zeros of ``value``'s shape and dtype, on its device."""
        raise NotImplementedError

    def copy(self, value):
        """An array that shares no storage with ``value`` (and no autograd history)."""
        raise NotImplementedError

    def dtype(self, spec):
        """The backend's dtype for ``spec`` (a name, a NumPy dtype, or a dtype of any kind)."""
        raise NotImplementedError

    def kind(self, dtype) -> str:
        """NumPy's one-letter kind of ``dtype``: "f" (bfloat16 included), "i", "u", "b", "c", ..."""
        raise NotImplementedError

    def is_floating(self, dtype) -> bool:
        return self.kind(dtype) == "f"

    def cond(self, pred, true_fn: Callable[[], Any], false_fn: Callable[[], Any]):
        """``true_fn()`` where the scalar boolean ``pred`` holds, else ``false_fn()``; both
        return the same structure (lists, tuples, NamedTuples of arrays and Nones). A backend
        may run both and select each array: the branches must be pure functions whose
        unpicked values (an inf or NaN included) are dropped, never raised on."""
        raise NotImplementedError

    def add(self, a, b):
        """``a + b`` elementwise, rounded once (the heavy-ball ``w + v``)."""
        return a + b

    def increment(self, counter):
        """``counter + 1``, never overflowing."""
        return counter + 1

    def to_numpy(self, value):
        raise NotImplementedError

    def step_context(self):
        """The context the step runs in (no inf/NaN warnings, no autograd recording)."""
        return contextlib.nullcontext()

    def check_devices(self, values, paths):
        """Raise ``ValueError`` naming the first array not on the device of the others."""

    def writable(self, target) -> bool:
        """Whether ``write`` can store into ``target`` (a plain, user-owned array)."""
        raise NotImplementedError

    def write(self, target, value):
        """Store ``value`` into the user-owned array ``target`` in place."""
        raise NotImplementedError
