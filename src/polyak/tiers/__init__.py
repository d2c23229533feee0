"""Tiers run a validated step; one function picks the tier.

A tier only supplies kernels: each reads the stage list (``polyak.core.stages``) and the
decisions derived from it, never Keras's control flow of its own.

* ``reference``: the pure step on whole arrays (``polyak.core.step``), for every input;
  the oracle the other tiers equal.
* ``cpu_fused``: one generated numba kernel over flat optimizer state, for NumPy arrays and
  PyTorch CPU tensors (``cpu_fused``).
* ``triton``: one generated Triton kernel launch per step over flat optimizer state, for
  PyTorch tensors on a CUDA device (``triton_fused``).
* ``foreach``: a few multi-tensor ``torch._foreach_*`` operations per stage, for PyTorch
  tensors on any other device, or that Triton cannot take, and for DTensors (FSDP2's
  sharded parameters) on every device (``foreach``).

:func:`select` runs after ``Optimizer.apply`` has validated every input, as torch.optim's
single ``_default_to_fused_or_foreach`` does: a tier that cannot take the input is passed
over, never crashes. ``optimizer.fused = False`` always picks the reference tier. A step guarded against
non-finite gradients (``skip_nonfinite``, ``LossScaleOptimizer``) runs on the fused tiers
too, through :mod:`polyak.tiers.guards`.

For tests, the environment variable ``POLYAK_TIER`` names a tier to try first, on any
device: ``POLYAK_TIER=triton`` with ``TRITON_INTERPRET=1`` runs the Triton kernel on CPU
tensors in Triton's interpreter; ``POLYAK_TIER=foreach`` runs the foreach tier on CPU tensors.
A tier that cannot take the call still falls through.
"""

from __future__ import annotations

import os

from polyak.tiers import cpu_fused, foreach, guards, reference, triton_fused

__all__ = ["select", "exact_gradients", "reference", "cpu_fused", "triton_fused", "foreach", "guards"]
#: the tiers ``POLYAK_TIER`` may name
FORCIBLE = {"triton": triton_fused, "foreach": foreach}


def exact_gradients(optimizer, variables, grads):
    """The fused tier's proof that ``grads`` are valid (every one an array of exactly its
    weight's kind, dtype, shape and layout: stricter than ``check_gradients``), as the
    addresses its kernel reads; None when it cannot tell, and the full check runs."""
    if not optimizer.fused:
        return None
    if isinstance(optimizer._tier_cache, triton_fused.TritonState):
        return triton_fused.exact_gradients(optimizer, variables, grads)
    return cpu_fused.exact_gradients(optimizer, variables, grads)


def select(optimizer, plan, variables, grads, proof):
    """The tier for this validated call of ``optimizer`` with ``plan`` (its ``_plan()``); a
    fused tier runs a plan with ``skip_nonfinite`` guarded (``guards.GuardedTier``)."""
    tier = _select(optimizer, plan, variables, grads, proof)
    return guards.GuardedTier(tier) if plan.skip_nonfinite and tier is not reference.TIER else tier


def _select(optimizer, plan, variables, grads, proof):
    if not optimizer.fused:
        return reference.TIER
    # ``proof`` is the addresses read by the tier whose state the optimizer holds
    triton_proof, cpu_proof = (proof, None) if isinstance(optimizer._tier_cache, triton_fused.TritonState) \
        else (None, proof)
    forced = FORCIBLE.get(os.environ.get("POLYAK_TIER", ""))
    if forced is triton_fused and triton_fused.can_take(optimizer, plan, variables, grads, True, triton_proof):
        return triton_fused.TIER
    if forced is foreach and foreach.can_take(optimizer, plan, variables, grads, forced=True):
        return foreach.TIER
    if cpu_fused.can_take(optimizer, plan, variables, grads, cpu_proof):
        return cpu_fused.TIER
    if triton_fused.can_take(optimizer, plan, variables, grads, proof=triton_proof):
        return triton_fused.TIER
    if foreach.can_take(optimizer, plan, variables, grads):
        return foreach.TIER
    return reference.TIER
