"""``LossScaleOptimizer``: dynamic loss scaling around another optimizer (Keras 3's).

``scale_loss`` multiplies the loss by the current scale ``s``. ``apply``
checks the gradients: if all are finite, they are divided by ``s`` and the
inner optimizer steps; after ``dynamic_growth_steps`` finite steps in a row
``s`` doubles. If any gradient holds inf or NaN, nothing of the inner
optimizer moves (weights, momentum, EMA, accumulators, counters), ``s`` halves
and the growth counter restarts.

As in Keras, the guard looks at the gradients as given (``polyak.core.nonfinite.GIVEN``), not
at what the inner step computes from them: a finite gradient whose norm overflows (about 2e19
in float32 with ``global_clipnorm``) steps the weights to NaN, as Keras's does. An inner
optimizer with ``skip_nonfinite=True`` adds its own guard, which looks at every value its step
computes (the scale, which saw finite gradients, is not halved then; ``skipped_steps`` counts).

``apply`` runs the guarded step on a fused tier when one takes the inner optimizer's plan
(:mod:`polyak.tiers.guards`: the flag from the tier's norm pass, the unscaling as the plan's
loss scale, the scale's update selected on the device by the flag), else the reference step.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

from polyak import options, serialization, tiers, validation
from polyak.annotations import Array, LearningRateLike, Weights
from polyak.core import nonfinite
from polyak.optimizers.base import Optimizer

if TYPE_CHECKING:
    from typing import Self

    from polyak.variable import Variable


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

    def __init__(self, inner_optimizer: Optimizer, initial_scale: float = 2.0 ** 15, dynamic_growth_steps: int = 2000,
                 name: str | None = None, **kwargs: Any) -> None:
        if not kwargs.pop("dynamic", True):
            raise ValueError(
                "LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set `loss_scale_factor` "
                "directly on the `inner_optimizer`."
            )
        for row in options.BASE:
            if row.name in kwargs and kwargs.pop(row.name) != row.default:
                raise ValueError(
                    f"LossScaleOptimizer does not support `{row.name}`. Instead, set `{row.name}` on the "
                    "`inner_optimizer`."
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

    def build(self, var_list: Weights) -> None:
        self.step_counter = self.add_variable((), initializer="zeros", dtype="int64", name="step_counter")
        self.dynamic_scale = self.add_variable((), initializer=self.initial_scale, dtype="float32",
                                               name="dynamic_scale")
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self) -> list[Variable]:
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: LearningRateLike) -> None:
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self) -> Variable | Array:
        return self.inner_optimizer.iterations

    def _counts_every_call(self):
        return False  # the inner optimizer counts only the finite calls

    def scale_loss(self, loss: Array) -> Array:
        return loss * (self.dynamic_scale.value if self.built else self.initial_scale)

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
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

    def _unscaled(self, grads, scale):
        return [g if g is None or getattr(v, "overwrite_with_gradient", False) else g / scale
                for g, v in zip(grads, self._trainable_variables)]

    def _step(self, param_values, optimizer_values, grads, host_iteration=None):
        """The inner optimizer's pure step on the unscaled gradients, guarded: when any
        gradient holds an inf or NaN, nothing of the inner optimizer moves. ``apply`` and
        ``stateless_apply`` (under ``jax.jit`` too) both run this. ``host_iteration`` (this
        optimizer's own count) is not the inner one's: the inner step reads its count as a value."""
        own, inner = optimizer_values[:len(self._variables)], optimizer_values[len(self._variables):]
        position = {id(v): k for k, v in enumerate(self._variables)}
        counter, scale = own[position[id(self.step_counter)]], own[position[id(self.dynamic_scale)]]
        bk = self._backend
        with bk.step_context():
            finite = nonfinite.all_finite(bk.xp, [g for g in grads if g is not None])  # Keras's check_finite
            params, inner = bk.cond(
                finite,
                lambda: self.inner_optimizer._step(param_values, inner, self._unscaled(grads, scale)),
                lambda: (list(param_values), list(inner)),
            )
            counter, scale = self._next_scale(bk, finite, counter, scale)
        own = list(own)
        own[position[id(self.step_counter)]] = counter
        own[position[id(self.dynamic_scale)]] = scale
        return params, own + list(inner)

    def _stepped(self):
        return self.inner_optimizer

    def _run_tier(self, variables, indices, grads, proof):
        """The inner step on a fused tier, guarded, with the gradients divided by the scale there
        (the plan's ``loss_scale_factor``); the reference step of ``_step`` where none takes it."""
        inner = self.inner_optimizer
        plan = inner._plan()
        tier = tiers.reference.TIER
        if not plan.skip_nonfinite:  # the inner optimizer's own guard: its plan stays the reference's
            plan = dataclasses.replace(plan, skip_nonfinite=True, guard=nonfinite.GIVEN,
                                       loss_scale_factor=self.dynamic_scale.value)
            tier = tiers.select(inner, plan, variables, grads, proof)
        if tier is tiers.reference.TIER:
            return tier.run(self, self._plan(), indices, grads)
        name, finite = tier.run_guarded(inner, plan, indices, grads, proof)
        counter, scale = self._next_scale(self._backend, finite, self.step_counter.value, self.dynamic_scale.value)
        self.step_counter.assign(counter)
        self.dynamic_scale.assign(scale)
        return name

    # --- config --------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inner_optimizer": serialization.serialize(self.inner_optimizer),
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    def _repr_arguments(self):
        arguments = super()._repr_arguments()
        del arguments["learning_rate"]  # always 0: the inner optimizer's is the one used
        return arguments

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Self:
        config = dict(config)
        inner = serialization.deserialize("optimizer", config.pop("inner_optimizer"), custom_objects)
        return cls(inner, **config)
