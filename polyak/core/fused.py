"""The scalars of one fused step: the control flow of ``step.py`` reduced to numbers.

A fused kernel updates every weight in one pass; what varies between calls
(accumulate or update, the learning rate, the clipping factor, the EMA factor,
whether the EMA overwrites the weights) is decided here, from the same plan and
state as the reference step, with the same roundings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from polyak.core import clipping
from polyak.core.state import StepPlan

DIRECT, ACCUMULATE, FROM_ACCUMULATED = 0, 1, 2
NO_CLIP, CLIP_NORM, CLIP_VALUE, CLIP_GLOBAL = 0, 1, 2, 3


@dataclass(frozen=True)
class FusedCall:
    mode: int
    learning_rate: Any  #: in the weights' dtype
    loss_scale: Any  #: divisor in the weights' dtype, 0 for none
    accumulation_steps: Any  #: in the weights' dtype, 0 for none
    clip: int
    clip_value: Any
    global_scale: Any
    denominators: Optional[Any]  #: per tensor, for CLIP_NORM
    weight_decay: Any
    ema_m: Any
    ema_1m: Any
    ema_overwrite: bool


def plan_call(plan: StepPlan, bk, dtype, iteration, stored_lr,
              sum_squares: Callable[[int], Any]) -> FusedCall:
    """Decide one fused call. ``sum_squares(mode)`` returns, per tensor, the sum of
    squares of the gradient the update will use (only called when clipping by norm)."""
    xp = bk.xp
    n_acc = plan.accumulation_steps
    mode = DIRECT
    if n_acc:
        mode = FROM_ACCUMULATED if bool((iteration + 1) % n_acc == 0) else ACCUMULATE
    lr = bk.cast(plan.learning_rate(iteration, stored_lr), dtype)
    clip, clip_value, scale, denominators = NO_CLIP, 0.0, 1.0, None
    if mode != ACCUMULATE:
        if plan.clipnorm:
            sums = bk.cast(sum_squares(mode), dtype)
            norms = xp.where(sums > 0, xp.sqrt(xp.where(sums > 0, sums, xp.ones_like(sums))), sums)
            clip, clip_value, denominators = CLIP_NORM, plan.clipnorm, xp.maximum(norms, plan.clipnorm)
        elif plan.global_clipnorm:
            norm = xp.sqrt(bk.cast(xp.sum(sum_squares(mode)), dtype))
            clip, clip_value = CLIP_GLOBAL, plan.global_clipnorm
            scale = clipping.global_scale(xp, norm, plan.global_clipnorm)
        elif plan.clipvalue:
            clip, clip_value = CLIP_VALUE, plan.clipvalue
    ema_m = ema_1m = bk.scalar(0, dtype)
    overwrite = False
    if plan.use_ema:
        iterations = iteration // n_acc if n_acc else iteration
        ema_m = bk.cast(iterations != 0, dtype) * plan.ema_momentum
        ema_1m = 1 - ema_m
        if plan.ema_overwrite_frequency:
            overwrite = bool((iterations + 1) % plan.ema_overwrite_frequency == 0)
    return FusedCall(
        mode=mode,
        learning_rate=lr,
        loss_scale=bk.scalar(plan.loss_scale_factor or 0, dtype),
        accumulation_steps=bk.scalar(n_acc or 0, dtype),
        clip=clip,
        clip_value=bk.scalar(clip_value, dtype),
        global_scale=bk.cast(scale, dtype),
        denominators=None if denominators is None else bk.cast(denominators, dtype),
        weight_decay=bk.scalar(plan.weight_decay or 0, dtype),
        ema_m=bk.cast(ema_m, dtype),
        ema_1m=bk.cast(ema_1m, dtype),
        ema_overwrite=overwrite,
    )
