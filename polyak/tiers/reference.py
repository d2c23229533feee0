"""The reference tier: the pure step on whole arrays, written back into the weights and variables."""

from __future__ import annotations

from polyak.optimizers import parameters as params_mod


class ReferenceTier:
    name = "reference"

    def run(self, optimizer, plan, indices, grads, proof=None) -> str:
        """One step of ``optimizer`` with ``grads`` for the built weights at ``indices`` (the pure
        step makes its own plan: wrappers such as ``LossScaleOptimizer`` guard it)."""
        weights = optimizer._trainable_variables
        full = [None] * len(weights)
        for i, g in zip(indices, grads):
            full[i] = g
        variables = optimizer.variables
        old_params = [params_mod.value_of(v) for v in weights]
        old_values = [v.value for v in variables]
        new_params, new_values = optimizer._step(old_params, old_values, full)
        for weight, old, new in zip(weights, old_params, new_params):
            if new is not old:
                params_mod.write(weight, new, optimizer._backend)
        for variable, old, new in zip(variables, old_values, new_values):
            if new is not old:
                variable.assign(new)
        return self.name


TIER = ReferenceTier()
