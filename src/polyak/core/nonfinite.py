"""Non-finite gradients: the predicate ``all(isfinite(g) for every element of every g)``."""

from __future__ import annotations

import functools


def all_finite(xp, grads):
    """A scalar boolean array: true when no gradient holds an inf or a NaN.

    ``grads`` is a non-empty list of arrays. The answer is an array, not a
    Python bool, so callers branch on it with ``bk.cond`` and it traces under jit.
    """
    return functools.reduce(xp.logical_and, [xp.all(xp.isfinite(g)) for g in grads])
