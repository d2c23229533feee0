"""Tiers run a validated step; one function picks the tier.

A tier only supplies kernels: each reads the stage list (``polyak.core.stages``) and the
decisions derived from it, never Keras's control flow of its own.

* ``reference``: the pure step on whole arrays (``polyak.core.step``), for every input;
  the oracle the other tiers equal.
* ``cpu_fused``: one generated numba kernel over flat optimizer state, for NumPy arrays and
  PyTorch CPU tensors (``cpu_fused``).

:func:`select` runs after ``Optimizer.apply`` has validated every input, as torch.optim's
single ``_default_to_fused_or_foreach`` does: a tier that cannot take the input is passed
over, never crashes. ``optimizer.fused = False`` always picks the reference tier.
"""

from __future__ import annotations

from polyak.tiers import cpu_fused, reference

__all__ = ["select", "exact_gradients", "reference", "cpu_fused"]


def exact_gradients(optimizer, variables, grads):
    """The fused tier's proof that ``grads`` are valid (every one an array of exactly its
    weight's kind, dtype, shape and layout: stricter than ``check_gradients``), as the
    addresses its kernel reads; None when it cannot tell, and the full check runs."""
    if not optimizer.fused:
        return None
    return cpu_fused.exact_gradients(optimizer, variables, grads)


def select(optimizer, plan, variables, grads, proof):
    """The tier for this validated call of ``optimizer`` with ``plan`` (its ``_plan()``)."""
    if optimizer.fused and cpu_fused.can_take(optimizer, plan, variables, grads, proof):
        return cpu_fused.TIER
    return reference.TIER
