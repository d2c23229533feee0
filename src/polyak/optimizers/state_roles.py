"""The optimizer's variables by role: the one place that knows which variable is what.

An optimizer's variables are, in Keras's order: ``iteration``, ``learning_rate`` (when a
float), the per-weight roles — ``average`` (EMA), ``gradient_accumulator``, the update rule's
slots (SGD: ``momentum``), and polyak's ``master`` copies — each a list aligned with the
weights (``None`` where a weight has none), then polyak's ``skipped_steps``. The step reads
and writes them as an :class:`~polyak.core.state.OptimizerState`; checkpoints key them as
``{weight path}/{role}``; the fused tiers pack each role into one flat buffer;
``ShardedOptimizer`` splits each role over the ranks. All of them go through this module.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from polyak.core.state import OptimizerState
from polyak.variable import Variable

AVERAGE, ACCUMULATOR, MASTER = "average", "gradient_accumulator", "master"


class StateRoles(NamedTuple):
    """An optimizer's variables grouped by role (``optimizer.state_roles``)."""

    iteration: Variable
    learning_rate: Optional[Variable]  #: None when the rate is a schedule or a callable
    skipped: Optional[Variable]  #: None unless ``skip_nonfinite``
    per_weight: tuple  #: ``((role, [Variable or None per weight]), ...)`` in Keras's order
    weight_paths: tuple  #: each weight's path (its Variable path, pytree key path or position)

    def role(self, name) -> list:
        """The per-weight variables of role ``name`` (empty when the optimizer keeps none)."""
        return next((variables for role, variables in self.per_weight if role == name), [])

    @property
    def slots(self) -> tuple:
        """The update rule's roles: ``((name, variables), ...)``."""
        return tuple((r, v) for r, v in self.per_weight if r not in (AVERAGE, ACCUMULATOR, MASTER))

    def scalars(self) -> list:
        """``[(name, Variable)]`` for the counters and the stored rate that exist."""
        pairs = [("iteration", self.iteration), ("learning_rate", self.learning_rate),
                 ("skipped_steps", self.skipped)]
        return [(name, v) for name, v in pairs if v is not None]

    def keys(self) -> dict:
        """``{id(variable): key}``: ``iteration``, ``learning_rate``, ``skipped_steps`` and
        ``{weight path}/{role}``, the names checkpoints store them under."""
        keys = {id(v): name for name, v in self.scalars()}
        for role, variables in self.per_weight:
            for path, variable in zip(self.weight_paths, variables):
                if variable is not None:
                    keys[id(variable)] = f"{path}/{role}"
        return keys

    def state_from(self, variables, values) -> OptimizerState:
        """The step's view of ``values`` (aligned with ``variables``)."""
        position = {id(v): k for k, v in enumerate(variables)}

        def pick(group):
            return tuple(None if v is None else values[position[id(v)]] for v in group)

        return OptimizerState(
            iteration=values[position[id(self.iteration)]],
            learning_rate=None if self.learning_rate is None else values[position[id(self.learning_rate)]],
            averages=pick(self.role(AVERAGE)),
            accumulators=pick(self.role(ACCUMULATOR)),
            slots=tuple(pick(group) for _, group in self.slots),
            masters=pick(self.role(MASTER)),
            skipped=None if self.skipped is None else values[position[id(self.skipped)]],
        )

    def values_from(self, variables, state: OptimizerState, values) -> list:
        """``values`` with the entries the step returned in ``state`` replaced."""
        position = {id(v): k for k, v in enumerate(variables)}
        values = list(values)

        def put(group, new):
            for v, x in zip(group, new):
                if v is not None:
                    values[position[id(v)]] = x

        put([self.iteration], [state.iteration])
        if self.skipped is not None:
            put([self.skipped], [state.skipped])
        put(self.role(AVERAGE), state.averages)
        put(self.role(ACCUMULATOR), state.accumulators)
        put(self.role(MASTER), state.masters)
        for (_, group), new in zip(self.slots, state.slots):
            put(group, new)
        return values
