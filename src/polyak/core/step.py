"""One optimizer step as a pure function: ``(params, state, grads) -> (params, state)``.

The reference step runs :data:`polyak.core.stages.STAGES`, Keras 3's order, on whole arrays.
With master weights, a 16-bit weight that has a float32 master copy is stepped through its
master: the stages update the master in float32, and the weight becomes the master rounded to
its dtype.

With ``skip_nonfinite`` (not a Keras option) the whole step is guarded
(:mod:`polyak.core.nonfinite`): when any value the step computes from the gradients (the
gradients after the loss scale and accumulation, clipping's norms) holds an inf or a NaN,
weights and state come back unchanged, iteration count included, and only the ``skipped``
counter goes up by one. The stages compute the flag as they go; the choice goes through
``bk.cond``.

Nothing is mutated: new arrays are returned, and branches that depend on the iteration go
through ``bk.cond`` so the step traces under ``jax.jit``.
"""

from __future__ import annotations

from polyak.core import nonfinite
from polyak.core.stages import STAGES, Values
from polyak.core.state import OptimizerState, StepPlan


def apply_step(plan: StepPlan, bk, params, state: OptimizerState, grads, host_iteration=None):
    """Return ``(new_params, new_state)``. ``grads`` aligns with ``params``; ``None`` skips.
    ``host_iteration``: ``state.iteration`` as a Python int when the caller knows it without
    reading the device (``apply``); the decisions that depend on the count then take it."""
    if not plan.skip_nonfinite:
        return keras_step(plan, bk, params, state, grads, host_iteration)
    if plan.guard == nonfinite.GIVEN:
        finite = nonfinite.flag(plan, bk.xp, [g for g in grads if g is not None])
        return bk.cond(finite, lambda: keras_step(plan, bk, params, state, grads, host_iteration),
                       lambda: nonfinite.skip(bk, params, state))
    new_params, new_state, finite = _stages(plan, bk, params, state, grads, host_iteration)
    if finite is None:  # nothing computed from a gradient
        return new_params, new_state
    finite = nonfinite.agreed(plan, bk.xp, finite)
    return bk.cond(finite, lambda: (new_params, new_state), lambda: nonfinite.skip(bk, params, state))


def keras_step(plan: StepPlan, bk, params, state: OptimizerState, grads, host_iteration=None):
    """Every stage in order, with Keras's handling of non-finite gradients (they propagate)."""
    return _stages(plan, bk, params, state, grads, host_iteration)[:2]


def _stages(plan, bk, params, state, grads, host_iteration):
    """``(new_params, new_state, finite)``: ``finite`` the flag of what the guard looked at, or None."""
    s = Values(originals=list(params), params=list(params), grads=list(grads), state=state,
               accumulators=list(state.accumulators), slots=[list(slot) for slot in state.slots],
               averages=state.averages, masters=state.masters, host_iteration=host_iteration)
    for stage in STAGES:
        if s.descending or not stage.needs_descent:
            stage.reference(plan, bk, s)
    new_state = OptimizerState(
        iteration=s.iteration,
        learning_rate=state.learning_rate,
        averages=tuple(s.averages),
        accumulators=tuple(s.accumulators),
        slots=tuple(tuple(slot) for slot in s.slots),
        masters=tuple(s.masters),
        skipped=state.skipped,
    )
    return s.params, new_state, s.finite
