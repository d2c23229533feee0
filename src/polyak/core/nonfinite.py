"""The non-finite guard, once: what a guarded step looks at, the predicate, the skipped count.

A plan with ``skip_nonfinite`` is guarded; its ``guard`` says what the guard looks at:

* :data:`COMPUTED` (polyak's ``skip_nonfinite``): every value the step computes from the
  gradients, before anything is written: the gradient an ``overwrite_with_gradient`` weight
  takes; the gradient the descent takes (after the loss scale's division and accumulation's
  mean), or on a call that only accumulates, the accumulated sum; and the norms clipping
  computes (per tensor for ``clipnorm``, over all gradients for ``global_clipnorm``), which
  overflow in float32 for finite gradients of about 2e19. With norm clipping the norms stand
  for the gradient they are taken of: a norm is finite exactly when every element is and no
  square overflows. Not looked at: the update itself (weights, momentum, EMA), which the fused
  tiers write as they compute it;
* :data:`GIVEN` (a ``LossScaleOptimizer``'s guard, as Keras's ``check_finite``): the gradients
  as given, before the scale divides them.

The predicate is :func:`all_finite`; a tier's flag is :func:`flag` over what the stages put in
its call's ``checked`` (the check pass :func:`check_pass`, the norms), the reference step's
the same over the same values. A skipped step changes nothing but ``skipped``, which goes up
through :func:`count_skipped`: by the backend's ``increment``, the iteration count's, which
saturates at the dtype's largest value where it can be reached (JAX's int32 without x64).
"""

from __future__ import annotations

import functools

COMPUTED, GIVEN = "computed", "given"
#: the check pass's statement: the gradient less itself, 0 where the gradient is finite and NaN
#: where it is inf or NaN, so a tensor's sum of squares is 0 exactly when all of it is finite
#: (one read of the gradients). Not ``x * 0``: the CPU kernels may reassociate, and
#: ``(g / s) * 0`` becomes ``g * (0 / s)``, blind to the division's overflow
CHECK = ("x = x - x",)


def all_finite(xp, values):
    """A scalar boolean array: true when no array of the non-empty list ``values`` holds an inf
    or a NaN. An array, not a Python bool, so callers branch on it with ``bk.cond`` and it traces
    under jit."""
    return functools.reduce(xp.logical_and, [xp.all(xp.isfinite(v)) for v in values])


def looks_at(plan, what) -> bool:
    """Whether ``plan`` is guarded and its guard looks at ``what`` (:data:`COMPUTED` or :data:`GIVEN`)."""
    return bool(plan.skip_nonfinite) and plan.guard == what


def norms_cover(plan) -> bool:
    """Whether clipping's norms stand for the check of the gradient they are taken of."""
    return bool(plan.clipnorm or plan.global_clipnorm)


def flag(plan, xp, checked):
    """The guard's flag for a step of ``plan`` from the values the step computed and checks
    (``checked``, non-empty for a guarded plan): True for an unguarded plan, else
    :func:`all_finite` as every process of the step agrees on it (``plan.squares``)."""
    if not plan.skip_nonfinite:
        return True
    return agreed(plan, xp, all_finite(xp, checked))


def agreed(plan, xp, finite):
    """The flag ``finite`` as every process of a step of ``plan`` agrees on it (``plan.squares``:
    the ranks of a ``ShardedOptimizer`` skip together)."""
    return plan.squares.agree(xp, finite)


def computed(plan, xp, values):
    """:func:`all_finite` of ``values`` when ``plan``'s guard looks at what the step computes
    (and there are values), else None: nothing checked."""
    return all_finite(xp, values) if values and looks_at(plan, COMPUTED) else None


def both(xp, finite, other):
    """``finite and other``, either of them None for nothing checked yet."""
    return other if finite is None else finite if other is None else xp.logical_and(finite, other)


def check_pass(call, statements=()):
    """Put in ``call.checked`` the per-tensor sums of the check pass over the gradient as
    ``call``'s gradient statements so far and ``statements`` make it."""
    probe = call.probe(tuple(statements) + CHECK, {})
    call.checked.append(call.sum_squares(probe))


def count_skipped(bk, skipped, finite):
    """The skipped-step count after a guarded step: ``skipped`` where ``finite``, else one more
    (``bk.increment``: saturating as the iteration count does)."""
    return bk.cond(finite, lambda: skipped, lambda: bk.increment(skipped))


def skip(bk, params, state):
    """What a skipped step returns: the weights and state as they were, one more skipped step."""
    return list(params), state._replace(skipped=bk.increment(state.skipped))
