"""A guarded fused step: the step runs only when every element of every gradient is finite.

Two things guard a step: ``skip_nonfinite`` (a skipped call counts in ``skipped_steps``) and a
``LossScaleOptimizer`` (a skipped call halves its scale). Either way the fused tier gets a
plan with ``skip_nonfinite`` set and runs it in three parts:

1. the flag ``finite = all(isfinite(g))`` over the raw gradients, from the tier's own norm
   pass run on ``x * 0``: that is 0 where ``x`` is finite and NaN where it is inf or NaN, so a
   tensor's sum of squares is 0 exactly when all of it is finite (one read of the gradients);
2. the step, as the flag says: a flag on the host (the CPU tier; the foreach tier, which reads
   it back; the Triton tier when the plan decides on the count, see ``calls.needs_count``) runs
   the kernel or not; a flag on the device (the Triton tier otherwise) goes to the kernel, whose
   programs then store nothing, and the count goes up by it there, so the host never waits;
3. the counts: the iteration count goes up for a step that ran (the tier's ``advance(finite)``),
   ``skipped_steps`` for one that did not.

Nothing else differs from the reference's guard (:func:`polyak.core.step.guarded`): the
same steps run, with the same numbers, and a skipped step moves nothing.
"""

from __future__ import annotations

#: what the norm pass sums for the flag: the gradient times a zero of its dtype
CHECK = ("x = x * zero",)


def check_call(call):
    """``call`` (an empty :class:`~polyak.core.kernel_call.KernelCall`) set up for the flag's
    norm pass: each tensor's sum of squares is then 0 if it is finite, else NaN."""
    call.add(key="finite", gradient=CHECK, scalars={"zero": 0})
    return call


class GuardedTier:
    """``tier`` (a fused tier) running a plan with ``skip_nonfinite``: the flag, the step as it
    says, then ``skipped_steps`` counted when the optimizer keeps it."""

    def __init__(self, tier):
        self.tier = tier
        self.name = tier.name

    def run(self, optimizer, plan, indices, grads, proof=None) -> str:
        return self.run_guarded(optimizer, plan, indices, grads, proof)[0]

    def run_guarded(self, optimizer, plan, indices, grads, proof=None):
        """``(the tier's name, finite)``: ``finite`` a Python bool, or a flag on the device."""
        finite = self.tier.finite(optimizer, plan, grads, proof)
        name = self.tier.run(optimizer, plan, indices, grads, proof, finite=finite)
        skipped = optimizer.skipped_steps
        if skipped is not None:
            count_skipped(optimizer._backend, skipped, finite)
        return name, finite


def count_skipped(bk, variable, finite):
    """``variable + 1`` unless ``finite`` (a Python bool, or a flag selected on the device)."""
    if finite is not True:
        value = variable.value
        variable.assign(bk.cond(finite, lambda: value, lambda: bk.increment(value)))
