"""``SGD``: gradient descent with heavy-ball or Nesterov momentum (Keras 3's)."""

from __future__ import annotations

import math

from polyak import serialization, validation
from polyak.core.momentum import MomentumRule
from polyak.optimizers.base import Optimizer


def _checked_momentum(momentum):
    """``momentum`` as a float, refused in Keras's words unless a real number in [0, 1]."""
    requirement = "a float between [0, 1]"
    if not validation.is_real(momentum):
        validation.fail("momentum", momentum, requirement, TypeError)
    try:
        value = float(momentum)
    except OverflowError:
        value = math.inf
    if not 0 <= value <= 1:  # NaN included
        validation.fail("momentum", momentum, requirement)
    return value


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
        **kwargs: the base arguments of :class:`polyak.optimizers.Optimizer`
            (weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
            ema_momentum, ema_overwrite_frequency, loss_scale_factor,
            gradient_accumulation_steps, name), and polyak's ``skip_nonfinite``.

    Example::

        >>> import numpy as np, polyak
        >>> w = np.array([1.0, 2.0])
        >>> opt = polyak.SGD(learning_rate=0.1, momentum=0.9)
        >>> opt.apply([np.array([1.0, 1.0])], [w])
        >>> w
        array([0.9, 1.9])
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None, loss_scale_factor=None, gradient_accumulation_steps=None,
                 name=None, master_weights=False, **kwargs):
        momentum = _checked_momentum(momentum)
        nesterov = validation.boolean("nesterov", nesterov)
        super().__init__(
            learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
            global_clipnorm=global_clipnorm, use_ema=use_ema, ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency, loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps, name=name, master_weights=master_weights,
            **kwargs,
        )
        self.momentum = momentum
        self.nesterov = nesterov
        self.momentums = []
        self._rule = MomentumRule(momentum, nesterov)

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

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config
