"""``LossScaleOptimizer``: dynamic loss scaling around another optimizer (Keras 3's).

``scale_loss`` multiplies the loss by the current scale ``s``. ``apply``
checks the gradients: if all are finite, they are divided by ``s`` and the
inner optimizer steps; after ``dynamic_growth_steps`` finite steps in a row
``s`` doubles. If any gradient holds inf or NaN, nothing of the inner
optimizer moves (weights, momentum, EMA, accumulators, counters), ``s`` halves
and the growth counter restarts.
"""

from __future__ import annotations

from polyak import serialization, validation
from polyak.optimizers import parameters as params_mod
from polyak.optimizers import stateless
from polyak.optimizers.base import Optimizer
from polyak.optimizers.gradients import check_gradients

_BASE_DEFAULTS = {
    "weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None, "use_ema": False,
    "ema_momentum": 0.99, "ema_overwrite_frequency": None, "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


@serialization.builtin("optimizer", "keras.optimizers")
class LossScaleOptimizer(Optimizer):
    """Dynamic loss scaling for mixed-precision training.

    Args:
        inner_optimizer: the polyak optimizer that applies the unscaled gradients.
        initial_scale: the starting scale, a finite number > 0. Defaults to 2**15.
        dynamic_growth_steps: finite steps in a row after which the scale doubles (>= 1).
        name: the optimizer's name.

    ``variables`` is Keras's: this optimizer's iteration, learning_rate,
    step_counter and dynamic_scale, then the inner optimizer's variables.
    """

    def __init__(self, inner_optimizer, initial_scale=2.0 ** 15, dynamic_growth_steps=2000, name=None, **kwargs):
        if not kwargs.pop("dynamic", True):
            raise ValueError(
                "LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set `loss_scale_factor` "
                "directly on the `inner_optimizer`."
            )
        for arg, default in _BASE_DEFAULTS.items():
            if arg in kwargs and kwargs.pop(arg) != default:
                raise ValueError(
                    f"LossScaleOptimizer does not support `{arg}`. Instead, set `{arg}` on the `inner_optimizer`."
                )
        if kwargs:
            raise ValueError(f"LossScaleOptimizer does not support arguments: `{'`, `'.join(kwargs)}`.")
        if isinstance(inner_optimizer, LossScaleOptimizer):
            raise TypeError(
                "`inner_optimizer` must not itself be a LossScaleOptimizer. "
                f"Received: inner_optimizer={inner_optimizer.name!r}"
            )
        if not isinstance(inner_optimizer, Optimizer):
            validation.fail("inner_optimizer", inner_optimizer, "a polyak optimizer", TypeError)
        self.initial_scale = validation.real("initial_scale", initial_scale, low=0, low_open=True)
        self.dynamic_growth_steps = validation.integer("dynamic_growth_steps", dynamic_growth_steps, low=1)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.inner_optimizer.loss_scale_factor = None

    def build(self, var_list):
        self.step_counter = self.add_variable((), initializer="zeros", dtype="int64", name="step_counter")
        self.dynamic_scale = self.add_variable((), initializer=self.initial_scale, dtype="float32",
                                               name="dynamic_scale")
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return loss * (self.dynamic_scale.value if self.built else self.initial_scale)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # --- the scale's own update -------------------------------------------------------
    def _next_scale(self, bk, finite, counter, scale):
        """``(counter, scale)`` after a step: grow after enough finite steps, halve on a bad one."""
        grow = counter == self.dynamic_growth_steps - 1
        return bk.cond(
            finite,
            lambda: bk.cond(grow, lambda: (bk.zeros_like(counter), scale * 2.0), lambda: (counter + 1, scale)),
            lambda: (bk.zeros_like(counter), scale * 0.5),
        )

    def _unscaled(self, bk, grads, variables, scale):
        return [g if g is None or getattr(v, "overwrite_with_gradient", False) else g / scale
                for g, v in zip(grads, variables)]

    @staticmethod
    def _all_finite(bk, grads):
        xp = bk.xp
        flags = [xp.all(xp.isfinite(g)) for g in grads if g is not None]
        return xp.all(xp.stack(flags)) if flags else xp.asarray(True)

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not self.built:
            self.build(params_mod.check_parameters(trainable_variables))
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        self.inner_optimizer._check_variables_are_known(variables)
        bk = self._backend
        grads = check_gradients(bk, grads, [params_mod.value_of(v) for v in variables],
                                [params_mod.path_of(v, i) for i, v in enumerate(variables)])
        with bk.step_context():
            finite = self._all_finite(bk, grads)
        if bool(finite):
            self.inner_optimizer.apply(self._unscaled(bk, grads, variables, self.dynamic_scale.value), variables)
        counter, scale = self._next_scale(bk, finite, self.step_counter.value, self.dynamic_scale.value)
        self.step_counter.assign(counter)
        self.dynamic_scale.assign(scale)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        stateless.check_built(self)
        optimizer_variables = list(optimizer_variables)
        own, inner = optimizer_variables[:len(self._variables)], optimizer_variables[len(self._variables):]
        bk = self._backend
        position = {id(v): k for k, v in enumerate(self._variables)}
        counter, scale = own[position[id(self.step_counter)]], own[position[id(self.dynamic_scale)]]
        grads = list(grads)
        with bk.step_context():
            finite = self._all_finite(bk, grads)
            unscaled = self._unscaled(bk, grads, self._trainable_variables, scale)
            params, inner = bk.cond(
                finite,
                lambda: self.inner_optimizer.stateless_apply(inner, unscaled, trainable_variables),
                lambda: (list(trainable_variables), list(inner)),
            )
            counter, scale = self._next_scale(bk, finite, counter, scale)
        own[position[id(self.step_counter)]] = counter
        own[position[id(self.dynamic_scale)]] = scale
        return params, own + list(inner)

    # --- config --------------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": serialization.serialize(self.inner_optimizer),
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = serialization.deserialize("optimizer", config.pop("inner_optimizer"), custom_objects)
        return cls(inner, **config)
