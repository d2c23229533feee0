"""One optimizer step as a pure function: ``(params, state, grads) -> (params, state)``.

The order is Keras 3's ``Optimizer.apply``:

1. weights whose gradient is ``None`` are left alone;
2. weights flagged ``overwrite_with_gradient`` take their gradient as value
   (with accumulation: the elementwise max over the cycle, on its last call);
3. gradients are divided by ``loss_scale_factor``;
4. with ``accumulation_steps = N``: gradients are summed into accumulators, and
   on every N-th call the mean ``(g + acc) / N`` goes on to 5-7 and the
   accumulators are reset; without accumulation every call goes on;
5. clipping (per-tensor norm, value, or global norm);
6. decoupled weight decay ``w <- w - w * wd * lr`` on the masked weights;
7. the update rule (SGD: plain, heavy-ball or Nesterov momentum);
8. EMA of the weights, and the periodic overwrite of the weights by it;
9. constraints; the raw iteration count goes up by one (``bk.increment``,
   which never overflows).

With master weights, a 16-bit weight that has a float32 master copy is stepped
through its master: steps 2-9 update the master in float32, and the weight
becomes the master rounded to its dtype.

With ``skip_nonfinite`` (not a Keras option) the whole step is guarded: when
any element of any gradient is inf or NaN, weights and state come back
unchanged, iteration count included, and only the ``skipped`` counter goes up
by one. The predicate is an array and the choice goes through ``bk.cond``.

Nothing is mutated: new arrays are returned, and branches that depend on the
iteration go through ``bk.cond`` so the step traces under ``jax.jit``.
"""

from __future__ import annotations

from polyak.core import clipping, decay, ema, nonfinite
from polyak.core.state import OptimizerState, StepPlan


def _overwrite_with_gradient(bk, g, w, acc, is_update):
    """Returns ``(new_w, new_acc)`` for an ``overwrite_with_gradient`` weight."""
    if is_update is None:
        return bk.cast(g, w.dtype), acc
    merged = bk.xp.maximum(g, acc)
    return bk.cond(
        is_update,
        lambda: (bk.cast(merged, w.dtype), bk.zeros_like(acc)),
        lambda: (w, bk.cast(merged, acc.dtype)),
    )


def _descend(plan, bk, grads, params, slots, learning_rate, decay_mask):
    """Steps 5-7 on the descending weights."""
    grads = clipping.clip_gradients(
        bk.xp, grads, clipnorm=plan.clipnorm, clipvalue=plan.clipvalue, global_clipnorm=plan.global_clipnorm
    )
    if plan.weight_decay is not None:
        params = decay.decay_weights(bk, params, decay_mask, plan.weight_decay, learning_rate)
    return plan.rule(bk, grads, params, slots, learning_rate)


def apply_step(plan: StepPlan, bk, params, state: OptimizerState, grads):
    """Return ``(new_params, new_state)``. ``grads`` aligns with ``params``; ``None`` skips."""
    if not plan.skip_nonfinite:
        return _keras_step(plan, bk, params, state, grads)

    def step():
        return _keras_step(plan, bk, params, state, grads)

    def skip():
        return list(params), state._replace(skipped=state.skipped + 1)

    finite = nonfinite.all_finite(bk.xp, [g for g in grads if g is not None])
    return bk.cond(finite, step, skip)


def _keras_step(plan: StepPlan, bk, params, state: OptimizerState, grads):
    """Steps 1-9, with Keras's handling of non-finite gradients (they propagate)."""
    originals = list(params)
    params = [p if m is None else m for p, m in zip(originals, state.masters)] + originals[len(state.masters):]
    accumulators = list(state.accumulators)
    slots = [list(s) for s in state.slots]
    averages = state.averages
    raw = state.iteration
    n_acc = plan.accumulation_steps
    is_update = (raw + 1) % n_acc == 0 if n_acc else None

    descending = []
    for i, g in enumerate(grads):
        if g is None:
            continue
        if plan.overwrite[i]:
            acc = accumulators[i] if n_acc else None
            params[i], acc = _overwrite_with_gradient(bk, g, params[i], acc, is_update)
            if n_acc:
                accumulators[i] = acc
        else:
            descending.append(i)

    if descending:
        g = [grads[i] for i in descending]
        if plan.loss_scale_factor is not None:
            g = [x / plan.loss_scale_factor for x in g]
        lr = plan.learning_rate(raw, state.learning_rate)
        w = [params[i] for i in descending]
        s = tuple([slot[i] for i in descending] for slot in slots)
        mask = [plan.decay_mask[i] for i in descending]
        if n_acc:
            acc = [accumulators[i] for i in descending]

            def update():
                mean = [(x + a) / n_acc for x, a in zip(g, acc)]
                new_w, new_s = _descend(plan, bk, mean, w, s, lr, mask)
                return new_w, new_s, [None if a is None else bk.zeros_like(a) for a in accumulators]

            def accumulate():
                summed = list(accumulators)
                for i, x, a in zip(descending, g, acc):
                    summed[i] = bk.cast(x + a, a.dtype)
                return w, s, summed

            w, s, accumulators = bk.cond(is_update, update, accumulate)
        else:
            w, s = _descend(plan, bk, g, w, s, lr, mask)
        for k, i in enumerate(descending):
            params[i] = w[k]
            for slot, values in zip(slots, s):
                slot[i] = values[k]

        if plan.use_ema:
            iterations = raw // n_acc if n_acc else raw
            averages = tuple(ema.update_averages(bk, averages, params, iterations, plan.ema_momentum))
            if plan.ema_overwrite_frequency:
                params = ema.overwrite_with_averages(bk, params, averages, iterations, plan.ema_overwrite_frequency)

        for i in descending:
            constraint = plan.constraints[i]
            if constraint is not None:
                params[i] = bk.cast(constraint(params[i]), params[i].dtype)

    masters = tuple(None if m is None else params[i] for i, m in enumerate(state.masters))
    for i, m in enumerate(state.masters):
        if m is not None:
            params[i] = bk.cast(params[i], originals[i].dtype)
    new_state = OptimizerState(
        iteration=bk.increment(raw),
        learning_rate=state.learning_rate,
        averages=tuple(averages),
        accumulators=tuple(accumulators),
        slots=tuple(tuple(slot) for slot in slots),
        masters=masters,
        skipped=state.skipped,
    )
    return params, new_state

