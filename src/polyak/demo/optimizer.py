"""The demo's optimizer: the features people come to polyak for, in one ``SGD``."""

from __future__ import annotations

import polyak
from polyak.demo.settings import Settings


def make_optimizer(settings: Settings, total_steps: int, biases=()) -> polyak.SGD:
    """Nesterov SGD whose rate warms up linearly from 0 to ``settings.learning_rate``
    over the first ``warmup_fraction`` of ``total_steps``, then follows a cosine down
    to 0; decoupled weight decay ``w <- w - lr * weight_decay * w`` on every weight
    but the biases; gradients clipped to a global L2 norm; an EMA of the weights.

    The biases are spared the decay by name (``polyak.Variable``s named ``..._bias``)
    and, when the weights carry no name (torch parameters), as the list ``biases``."""
    warmup = int(total_steps * settings.warmup_fraction)
    schedule = polyak.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total_steps - warmup,
        warmup_target=settings.learning_rate, warmup_steps=warmup,
    )
    opt = polyak.SGD(
        learning_rate=schedule, momentum=settings.momentum, nesterov=True,
        weight_decay=settings.weight_decay, global_clipnorm=settings.global_clipnorm,
        use_ema=True, ema_momentum=settings.ema_momentum,
    )
    opt.exclude_from_weight_decay(var_list=list(biases), var_names=["bias"])
    return opt
