"""The fused call of a tier that takes its decisions on the host, in NumPy scalars.

The CPU and Triton tiers fill a :class:`~polyak.core.kernel_call.KernelCall` the same way:
the count from the optimizer's host copy (no device read), the stored rate read as a NumPy
scalar, and every scalar cast to the weights' NumPy dtype before it reaches the kernel.
"""

from __future__ import annotations

import numpy as np

from polyak.core.kernel_call import KernelCall


def host_call(optimizer, dtype, sum_squares) -> KernelCall:
    """An empty call for ``optimizer``'s step with weights of NumPy ``dtype``;
    ``sum_squares(call)`` runs the tier's norm pass."""
    stored = optimizer.state_roles.learning_rate
    scalar = dtype.type
    return KernelCall(
        iteration=np.int64(optimizer._iterations.host),
        stored_learning_rate=None if stored is None else optimizer._backend.to_numpy(stored.value),
        xp=np,
        cast=lambda value: scalar(value),
        cast_array=lambda values: np.asarray(values).astype(dtype),
        sum_squares=sum_squares,
    )
