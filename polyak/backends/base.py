"""What a backend supplies: array kernels and storage, never control flow of its own.

The optimizer's step (``polyak.core``) is written once against this interface.
A backend says how to make and cast arrays, how to branch on a scalar predicate
(eagerly for NumPy and PyTorch, ``lax.cond`` under a JAX trace), and how to
write a new value into the storage a user handed us.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable


class Backend:
    """Array kernels for one kind of array. Subclasses fill in every method."""

    name: str = "abstract"
    #: The array namespace the core's math calls (``numpy``, ``torch``, ...).
    xp: Any = None

    def owns(self, value) -> bool:
        """Whether ``value`` is an array of this backend."""
        raise NotImplementedError

    def asarray(self, value, dtype=None):
        raise NotImplementedError

    def cast(self, value, dtype):
        """``value`` as ``dtype``; may return ``value`` itself when it already is."""
        raise NotImplementedError

    def scalar(self, value, dtype):
        """A 0-d array holding ``value`` rounded to ``dtype``."""
        raise NotImplementedError

    def zeros_like(self, value):
        raise NotImplementedError

    def is_floating(self, dtype) -> bool:
        raise NotImplementedError

    def cond(self, pred, true_fn: Callable[[], Any], false_fn: Callable[[], Any]):
        """Run one branch on a scalar boolean; both branches return the same structure."""
        raise NotImplementedError

    def to_numpy(self, value):
        raise NotImplementedError

    def quiet(self):
        """A context in which inf/NaN arithmetic (which the step handles) raises no warnings."""
        return contextlib.nullcontext()

    def writable(self, target) -> bool:
        """Whether ``write`` can store into ``target`` (a plain, user-owned array)."""
        raise NotImplementedError

    def write(self, target, value):
        """Store ``value`` into the user-owned array ``target`` in place."""
        raise NotImplementedError
