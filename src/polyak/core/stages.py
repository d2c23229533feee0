"""Keras 3's optimizer step as one ordered list of stages: the single statement of its order.

``STAGES`` below is the order of ``keras.optimizers.Optimizer.apply``:

1. ``master_weights``: a 16-bit weight with a float32 master copy is stepped through it;
2. ``overwrite_with_gradient``: flagged weights take their gradient as value (with
   accumulation: the elementwise max over the cycle, on its last call); the others descend;
3. ``loss_scale``: gradients are divided by ``loss_scale_factor``;
4. ``accumulation``: with N steps, gradients are summed into accumulators and on every N-th
   call their mean ``(g + acc) / N`` goes on to the *descent* and the accumulators reset;
   the descent is
   5. ``clipping`` (per-tensor norm, value, or global norm),
   6. ``weight_decay``: ``w <- w - w * wd * lr`` on the masked weights,
   7. ``update_rule`` (SGD: plain, heavy-ball or Nesterov momentum);
   with ``plan.groups`` (param groups), 6 and 7 run per group with its own rate and
   hyperparameters, after 5 over every weight;
8. ``ema``: the moving average of the weights, and ``ema_overwrite``: the weights replaced
   by it every ``ema_overwrite_frequency`` updates;
9. ``constraints``; ``round_masters``: 16-bit weights become their masters rounded;
10. ``counter``: the raw iteration count goes up by one.

Each stage says the same thing twice, in the two forms the tiers need:

* ``reference(plan, bk, s)``: array operations on whole tensors, for the reference step
  (:func:`polyak.core.step.apply_step`), which runs the list in order;
* ``kernel(plan, call)``: what the stage adds to one fused call: statements per element
  (``x`` the gradient, ``wv`` the weight, ``{name}`` an element of the optimizer state of
  that role), scalars, and the key of the compiled kernel; ``fusable(plan)`` says whether
  it can, and the fused tiers decline a plan that any stage cannot fuse.

A statement is one assignment ``name = expression`` of arithmetic (``+ - * /``, unary
minus, parentheses) and ``clip(x, lo, hi)`` (NumPy's ``clip``: NaN stays NaN), so that
every fused tier can write it in its own dialect (numba: ``cpu_codegen``; Triton:
``triton_codegen``).

A fused kernel is the concatenation of the stages' statements, so it performs the reference
step's operations in the same order and dtype.
"""

from __future__ import annotations

import dataclasses

from polyak.core import clipping, decay, ema, nonfinite
from polyak.core.kernel_call import ACCUMULATE, FROM_ACCUMULATED, KernelCall
from polyak.core.state import LOCAL_SQUARES
from polyak.core.values import Values


class Stage:
    """One stage; ``descent`` stages run inside ``accumulation`` and only on an update."""

    name = "stage"
    descent = False
    #: runs only when some weight descends (has a gradient and is not overwritten)
    needs_descent = True

    def reference(self, plan, bk, s: Values) -> None:
        pass

    def fusable(self, plan) -> bool:
        """Whether a fused kernel can run this stage for ``plan``."""
        return True

    def kernel(self, plan, call: KernelCall) -> None:
        """Add this stage's statements and scalars to ``call``."""


class MasterWeights(Stage):
    name = "master_weights"
    needs_descent = False

    def reference(self, plan, bk, s):
        s.params = [p if m is None else m for p, m in zip(s.originals, s.masters)] + s.originals[len(s.masters):]

    # 16-bit weights (the only ones with masters) are not fused: the tiers decline them by dtype


class OverwriteWithGradient(Stage):
    name = "overwrite_with_gradient"
    needs_descent = False

    def reference(self, plan, bk, s):
        n_acc = plan.gradient_accumulation_steps
        is_update = (s.count + 1) % n_acc == 0 if n_acc else None
        for i, g in enumerate(s.grads):
            if g is None:
                continue
            if not plan.overwrite[i]:
                s.descending.append(i)
                continue
            s.check(plan, bk, [g])
            w, acc = s.params[i], s.accumulators[i] if n_acc else None
            if is_update is None:
                s.params[i] = bk.cast(g, w.dtype)
                continue
            merged = bk.xp.maximum(g, acc)
            s.params[i], s.accumulators[i] = bk.cond(
                is_update,
                lambda: (bk.cast(merged, w.dtype), bk.zeros_like(acc)),
                lambda: (w, bk.cast(merged, acc.dtype)),
            )

    def fusable(self, plan):
        return not any(plan.overwrite)


class LossScale(Stage):
    name = "loss_scale"

    def reference(self, plan, bk, s):
        s.g = [s.grads[i] for i in s.descending]
        if plan.loss_scale_factor is not None:
            s.g = [x / bk.scalar(plan.loss_scale_factor, x.dtype) for x in s.g]

    def kernel(self, plan, call):
        if nonfinite.looks_at(plan, nonfinite.GIVEN):
            nonfinite.check_pass(call)
        if plan.loss_scale_factor is not None:  # a number, or a LossScaleOptimizer's scale (an array)
            call.add(key="scaled", gradient=("x = x / loss_scale",), scalars={"loss_scale": plan.loss_scale_factor})


class Clipping(Stage):
    name = "clipping"
    descent = True

    def fusable(self, plan):
        return not (plan.clipnorm or plan.global_clipnorm) or plan.squares is LOCAL_SQUARES

    def reference(self, plan, bk, s):
        if not nonfinite.norms_cover(plan):
            s.check(plan, bk, s.g)
        s.g, norms = clipping.clip_with_norms(bk.xp, s.g, clipnorm=plan.clipnorm, clipvalue=plan.clipvalue,
                                              global_clipnorm=plan.global_clipnorm, squares=plan.squares)
        s.check(plan, bk, norms)

    def kernel(self, plan, call):
        if not nonfinite.norms_cover(plan) and nonfinite.looks_at(plan, nonfinite.COMPUTED):
            nonfinite.check_pass(call)
        if plan.clipnorm:
            norms = clipping.norm_from_squares(call.xp, call.cast_array(call.sum_squares(call)))
            call.check(plan, norms)
            call.denominators = call.xp.maximum(norms, plan.clipnorm)
            call.add(key="clipnorm", gradient=("x = (x * clip_value) / {denominator}",),
                     scalars={"clip_value": plan.clipnorm})
        elif plan.global_clipnorm:
            total = call.xp.sum(call.sum_squares(call))
            norm = call.xp.sqrt(call.cast(total))
            call.check(plan, norm)
            call.add(key="global_clipnorm", gradient=("x = x * global_scale",),
                     scalars={"global_scale": clipping.global_scale(call.xp, norm, plan.global_clipnorm)})
        elif plan.clipvalue:
            call.add(key="clipvalue", gradient=("x = clip(x, -clip_value, clip_value)",),
                     scalars={"clip_value": plan.clipvalue})


class WeightDecay(Stage):
    name = "weight_decay"
    descent = True

    def reference(self, plan, bk, s):
        if plan.weight_decay is not None:
            s.w = decay.decay_weights(bk, s.w, s.mask, plan.weight_decay, s.learning_rate)

    def kernel(self, plan, call):
        if plan.weight_decay is not None and any(plan.decay_mask):
            call.decays = True
            call.add(key="decay", decayed=("wv = wv - wv * weight_decay * lr",),
                     scalars={"weight_decay": plan.weight_decay})


class UpdateRule(Stage):
    name = "update_rule"
    descent = True

    def reference(self, plan, bk, s):
        s.w, s.s = plan.rule(bk, s.g, s.w, s.s, s.learning_rate)

    def fusable(self, plan):
        return hasattr(plan.rule, "kernel_lines")

    def kernel(self, plan, call):
        rule = plan.rule
        call.add(key=rule.kernel_key(), lines=rule.kernel_lines(), scalars={"lr": call.learning_rate,
                 **rule.kernel_scalars()}, roles=rule.slot_names)


CLIPPING = Clipping()
DESCENT = (CLIPPING, WeightDecay(), UpdateRule())


class Accumulation(Stage):
    """Gradient accumulation, gating the descent stages (run directly without accumulation)."""

    name = "accumulation"

    def reference(self, plan, bk, s):
        n_acc = plan.gradient_accumulation_steps
        desc = s.descending
        s.learning_rate = s.rate(bk, plan.learning_rate)
        s.w = [s.params[i] for i in desc]
        s.s = tuple([slot[i] for i in desc] for slot in s.slots)
        s.mask = [plan.decay_mask[i] for i in desc]
        if n_acc:
            g, w, slots, acc = s.g, s.w, s.s, [s.accumulators[i] for i in desc]

            def update():  # on a copy: each branch may be traced (jax.lax.cond) and must not leak
                d = dataclasses.replace(s, g=[_mean(bk, x + a, n_acc) for x, a in zip(g, acc)], finite=None)
                _descend(plan, bk, d)
                return d.w, d.s, [None if a is None else bk.zeros_like(a) for a in s.accumulators], d.finite

            def accumulate():
                summed = list(s.accumulators)
                for i, x, a in zip(desc, g, acc):
                    summed[i] = bk.cast(x + a, a.dtype)
                return w, slots, summed, nonfinite.computed(plan, bk.xp, [summed[i] for i in desc])

            s.w, s.s, s.accumulators, finite = bk.cond((s.count + 1) % n_acc == 0, update, accumulate)
            s.finite = nonfinite.both(bk.xp, s.finite, finite)
        else:
            _descend(plan, bk, s)
        for k, i in enumerate(desc):
            s.params[i] = s.w[k]
            for slot, values in zip(s.slots, s.s):
                slot[i] = values[k]

    def kernel(self, plan, call):
        n_acc = plan.gradient_accumulation_steps
        if n_acc:
            call.mode = FROM_ACCUMULATED if bool((call.iteration + 1) % n_acc == 0) else ACCUMULATE
            call.roles.append("gradient_accumulator")
        if call.mode == ACCUMULATE:
            if nonfinite.looks_at(plan, nonfinite.COMPUTED):
                nonfinite.check_pass(call, ("x = x + {gradient_accumulator}",))
            call.add(key="accumulate", lines=("{gradient_accumulator} = x + {gradient_accumulator}",))
            return
        if call.mode == FROM_ACCUMULATED:
            call.add(key="from_accumulated", gradient=("x = (x + {gradient_accumulator}) / n_acc",),
                     lines=("{gradient_accumulator} = 0",), scalars={"n_acc": n_acc})
        call.learning_rate = call.cast(plan.learning_rate(call.iteration, call.stored_learning_rate))
        for stage in DESCENT:
            stage.kernel(plan, call)

    def fusable(self, plan):  # per-group hyperparameters (``plan.groups``) run the reference step only
        return plan.groups is None and all(stage.fusable(plan) for stage in DESCENT)


def _mean(bk, total, n):
    """``total / n``, by a 0-d array of ``total``'s dtype: true division (see ``schedules.functions``)."""
    return total / bk.scalar(n, total.dtype)


def _descend(plan, bk, s):
    """The descent stages on ``s``; with ``plan.groups``, clipping over every weight, then decay
    and the rule per group, each at its own rate and with its own hyperparameters."""
    if plan.groups is None:
        for stage in DESCENT:
            stage.reference(plan, bk, s)
        return
    CLIPPING.reference(plan, bk, s)
    s.w, s.s = list(s.w), tuple(list(slot) for slot in s.s)  # new lists: a traced branch must not leak
    for k, group in enumerate(plan.groups):
        members = [j for j, i in enumerate(s.descending) if plan.group_of[i] == k]
        if not members:
            continue
        keeps_slots = bool(getattr(group.rule, "slot_names", True))
        part = dataclasses.replace(
            s, g=[s.g[j] for j in members], w=[s.w[j] for j in members], mask=[s.mask[j] for j in members],
            s=tuple([slot[j] for j in members] for slot in s.s) if keeps_slots else (),
            learning_rate=s.rate(bk, group.learning_rate))
        own = dataclasses.replace(plan, rule=group.rule, weight_decay=group.weight_decay, groups=None)
        for stage in DESCENT[1:]:
            stage.reference(own, bk, part)
        for n, j in enumerate(members):
            s.w[j] = part.w[n]
            for slot, values in zip(s.s, part.s):
                slot[j] = values[n]


class MovingAverage(Stage):
    name = "ema"

    @staticmethod
    def updates(plan, iteration):
        """Completed updates: raw calls divided by the accumulation steps."""
        n_acc = plan.gradient_accumulation_steps
        return iteration // n_acc if n_acc else iteration

    def reference(self, plan, bk, s):
        if plan.use_ema:
            iterations = self.updates(plan, s.state.iteration)
            s.averages = tuple(ema.update_averages(bk, s.averages, s.params, iterations, plan.ema_momentum))

    def kernel(self, plan, call):
        if plan.use_ema:
            first = self.updates(plan, call.iteration) == 0
            m = call.cast(0.0 if first else plan.ema_momentum)
            call.add(key="ema", lines=("a = ema_m * {average} + ema_1m * wv", "{average} = a"),
                     scalars={"ema_m": m, "ema_1m": 1 - m}, roles=("average",))


class EmaOverwrite(Stage):
    name = "ema_overwrite"

    @staticmethod
    def due(plan, iteration):
        return (MovingAverage.updates(plan, iteration) + 1) % plan.ema_overwrite_frequency == 0

    def reference(self, plan, bk, s):
        if plan.use_ema and plan.ema_overwrite_frequency:
            iterations = MovingAverage.updates(plan, s.count)
            s.params = ema.overwrite_with_averages(bk, s.params, s.averages, iterations, plan.ema_overwrite_frequency)

    def kernel(self, plan, call):
        if plan.use_ema and plan.ema_overwrite_frequency and bool(self.due(plan, call.iteration)):
            call.add(key="ema_overwrite", lines=("wv = a",))


class Constraints(Stage):
    name = "constraints"

    def reference(self, plan, bk, s):
        for i in s.descending:
            constraint = plan.constraints[i]
            if constraint is not None:
                s.params[i] = bk.cast(constraint(s.params[i]), s.params[i].dtype)

    def fusable(self, plan):
        return plan.constraints.count(None) == len(plan.constraints)


class RoundMasters(Stage):
    name = "round_masters"
    needs_descent = False

    def reference(self, plan, bk, s):
        s.masters = tuple(None if m is None else s.params[i] for i, m in enumerate(s.masters))
        for i, m in enumerate(s.masters):
            if m is not None:
                s.params[i] = bk.cast(s.params[i], s.originals[i].dtype)


class Counter(Stage):
    """The raw call count goes up by one (``bk.increment`` never overflows); the fused tiers
    write ``iteration + 1`` after their call."""

    name = "counter"
    needs_descent = False

    def reference(self, plan, bk, s):
        s.iteration = bk.increment(s.state.iteration)


STAGES = (MasterWeights(), OverwriteWithGradient(), LossScale(), Accumulation(), MovingAverage(), EmaOverwrite(),
          Constraints(), RoundMasters(), Counter())

#: every stage's name, in order, descent stages in their place
ORDER = tuple(name for stage in STAGES for name in
              ([stage.name] + [d.name for d in DESCENT] if isinstance(stage, Accumulation) else [stage.name]))


def fusable(plan) -> bool:
    """Whether a fused kernel can run the whole step for ``plan`` (a guarded step's flag is
    made of what the stages put in the call's ``checked``: ``polyak.core.nonfinite``)."""
    return all(stage.fusable(plan) for stage in STAGES)


def kernel_call(plan, call: KernelCall) -> KernelCall:
    """``call`` filled in by every stage, in order."""
    for stage in STAGES:
        stage.kernel(plan, call)
    return call
