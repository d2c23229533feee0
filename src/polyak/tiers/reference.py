"""The reference tier: the pure step on whole arrays, written back into the weights and variables.

The step takes the count's decisions from the optimizer's host copy of it (see
:mod:`polyak.optimizers.iteration_count`), so on CUDA it reads nothing back from the device;
after a call that surely counted, the host copy is one more, and otherwise (a call that the
gradients may skip, decided on the device) it is read back only when next needed.
"""

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
        count = optimizer._iterations
        before = count.known_host
        new_params, new_values = optimizer._step(old_params, old_values, full, host_iteration=before)
        for weight, old, new in zip(weights, old_params, new_params):
            if new is not old:
                params_mod.write(weight, new, optimizer._backend)
        for variable, old, new in zip(variables, old_values, new_values):
            if new is old:
                continue
            if variable is count and before is not None and optimizer._counts_every_call():
                variable.assign(new, host=before + 1)
            else:
                variable.assign(new)
        return self.name


TIER = ReferenceTier()
