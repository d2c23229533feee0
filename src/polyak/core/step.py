"""One optimizer step as a pure function: ``(params, state, grads) -> (params, state)``.

The reference step runs :data:`polyak.core.stages.STAGES`, Keras 3's order, on whole arrays.
With master weights, a 16-bit weight that has a float32 master copy is stepped through its
master: the stages update the master in float32, and the weight becomes the master rounded to
its dtype.

With ``skip_nonfinite`` (not a Keras option) the whole step is guarded: when any element of
any gradient is inf or NaN, weights and state come back unchanged, iteration count included,
and only the ``skipped`` counter goes up by one. The predicate is an array and the choice
goes through ``bk.cond``.

Nothing is mutated: new arrays are returned, and branches that depend on the iteration go
through ``bk.cond`` so the step traces under ``jax.jit``.
"""

from __future__ import annotations

from polyak.core import nonfinite
from polyak.core.stages import STAGES, Values
from polyak.core.state import OptimizerState, StepPlan


def guarded(finite, bk, step, params, state):
    """``step()`` when ``finite`` (a scalar boolean array), else the inputs unchanged with
    ``skipped`` counted: the ``skip_nonfinite`` guard, also used by wrappers of the step."""
    def skip():
        return list(params), state._replace(skipped=state.skipped + 1)

    return bk.cond(finite, step, skip)


def apply_step(plan: StepPlan, bk, params, state: OptimizerState, grads, host_iteration=None):
    """Return ``(new_params, new_state)``. ``grads`` aligns with ``params``; ``None`` skips.
    ``host_iteration``: ``state.iteration`` as a Python int when the caller knows it without
    reading the device (``apply``); the decisions that depend on the count then take it."""
    if not plan.skip_nonfinite:
        return keras_step(plan, bk, params, state, grads, host_iteration)
    finite = nonfinite.all_finite(bk.xp, [g for g in grads if g is not None])
    return guarded(finite, bk, lambda: keras_step(plan, bk, params, state, grads, host_iteration), params, state)


def keras_step(plan: StepPlan, bk, params, state: OptimizerState, grads, host_iteration=None):
    """Every stage in order, with Keras's handling of non-finite gradients (they propagate)."""
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
    return s.params, new_state
