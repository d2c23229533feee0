"""A guarded fused step: the step runs only when what its guard looks at is finite.

Two things guard a step: ``skip_nonfinite`` (a skipped call counts in ``skipped_steps``) and a
``LossScaleOptimizer`` (a skipped call halves its scale). Either way the fused tier gets a
plan with ``skip_nonfinite`` set (a ``LossScaleOptimizer``'s with ``guard="given"``) and runs it
in three parts:

1. the flag: while the stages fill the tier's call they put in its ``checked`` what the guard
   looks at (:mod:`polyak.core.nonfinite`: the check pass's sums over the gradient, clipping's
   norms), and the tier takes ``nonfinite.flag`` of them, the reference step's predicate;
2. the step, as the flag says: a flag on the host (the CPU tier; the foreach tier, which reads
   it back; the Triton tier when the plan decides on the count, see ``calls.needs_count``) runs
   the kernel or not; a flag on the device (the Triton tier otherwise) goes to the kernel, whose
   programs then store nothing, and the count goes up by it there, so the host never waits;
3. the counts: the iteration count goes up for a step that ran (the tier's ``advance(finite)``),
   ``skipped_steps`` for one that did not (``nonfinite.count_skipped``).

Nothing else differs from the reference's guard (:func:`polyak.core.step.apply_step`): the
same values are looked at, the same steps run, with the same numbers, and a skipped step moves
nothing.
"""

from __future__ import annotations

from polyak.core import nonfinite


class GuardedTier:
    """``tier`` (a fused tier) running a plan with ``skip_nonfinite``: the step as its flag
    says, then ``skipped_steps`` counted when the optimizer keeps it."""

    def __init__(self, tier):
        self.tier = tier
        self.name = tier.name

    def run(self, optimizer, plan, indices, grads, proof=None) -> str:
        return self.run_guarded(optimizer, plan, indices, grads, proof)[0]

    def run_guarded(self, optimizer, plan, indices, grads, proof=None):
        """``(the tier's name, finite)``: ``finite`` a Python bool, or a flag on the device."""
        name, finite = self.tier.run_guarded(optimizer, plan, indices, grads, proof)
        skipped = optimizer.skipped_steps
        if skipped is not None and finite is not True:
            skipped.assign(nonfinite.count_skipped(optimizer._backend, skipped.value, finite))
        return name, finite
