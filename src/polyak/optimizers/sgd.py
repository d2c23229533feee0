"""``SGD``: gradient descent with heavy-ball or Nesterov momentum (Keras 3's)."""

from __future__ import annotations

from typing import Any

from polyak import options, serialization
from polyak.annotations import LearningRateLike, NoOtherKeyword
from polyak.core.momentum import MomentumRule
from polyak.optimizers.base import Optimizer


@serialization.builtin("optimizer", "keras.optimizers")
class SGD(Optimizer):
    """Gradient descent with momentum, with Keras 3's arguments, variables and numbers.

    ``momentum == 0``: ``w <- w - lr * g``. Otherwise, with velocity ``v``::

        v <- momentum * v - lr * g
        w <- w + v                          (nesterov=False)
        w <- w + momentum * v - lr * g      (nesterov=True)

    Args:
        learning_rate: a float, a ``LearningRateSchedule``, or a zero-argument
            callable. Defaults to 0.01.
        momentum: float in [0, 1]. Defaults to 0.0 (no velocity is kept).
        nesterov: use Nesterov momentum. Defaults to False.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
        ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name,
        master_weights, skip_nonfinite: as :class:`polyak.optimizers.Optimizer`'s.

    Any other keyword raises Keras's ``ValueError`` ("Argument(s) not recognized"), with
    the accepted name it resembles.

    Example::

        >>> import numpy as np, polyak
        >>> w = np.array([1.0, 2.0])
        >>> opt = polyak.SGD(learning_rate=0.1, momentum=0.9)
        >>> opt.apply([np.array([1.0, 1.0])], [w])
        >>> w
        array([0.9, 1.9])
    """

    def __init__(self, learning_rate: LearningRateLike = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float | None = None, clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None, use_ema: bool = False, ema_momentum: float = 0.99,
                 ema_overwrite_frequency: int | None = None, loss_scale_factor: float | None = None,
                 gradient_accumulation_steps: int | None = None, name: str | None = None,
                 master_weights: bool = False, skip_nonfinite: bool = False, **kwargs: NoOtherKeyword) -> None:
        rule = options.checked(options.RULE, dict(momentum=momentum, nesterov=nesterov))
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
            global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency, loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps, name=name, master_weights=master_weights,
            skip_nonfinite=skip_nonfinite, **kwargs,
        )
        self.momentum = rule["momentum"]
        self.nesterov = rule["nesterov"]
        self.momentums = []
        self._rule = MomentumRule(self.momentum, self.nesterov)

    def _build_slots(self, variables):
        """One ``momentum`` (velocity) per weight when momentum != 0."""
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum != 0 else []

    def _slot_variables(self):
        return (self.momentums,) if self.momentum != 0 else ()

    def _slot_names(self):
        return self._rule.slot_names

    @property
    def _update_rule(self):
        """SGD's rule (:class:`polyak.core.momentum.MomentumRule`), which the fused tiers can also run."""
        return self._rule

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(options.config_of(options.RULE, lambda name: getattr(self, name)))
        return config
