"""How a fused tier fills its :class:`~polyak.core.kernel_call.KernelCall`: on the host, or
keeping on the device what lives there.

Both take the count from the optimizer's host copy (no device read) and cast every scalar
to the weights' dtype before it reaches the kernel:

* :func:`host_call` (the CPU tier): the stored rate read as a NumPy scalar, NumPy for the
  norms' arithmetic;
* :func:`device_call` (the Triton and foreach tiers): a number known on the host stays a
  NumPy scalar, while what lives on the device (the stored rate, the norm pass's sums and
  what clipping computes from them) stays a tensor there, in the backend's array namespace,
  so a step never waits for the device.
"""

from __future__ import annotations

import numpy as np

from polyak.core.kernel_call import KernelCall


def host_call(optimizer, dtype, sum_squares) -> KernelCall:
    """An empty call for ``optimizer``'s step with weights of NumPy ``dtype``;
    ``sum_squares(call)`` runs the tier's norm pass and returns NumPy float64 sums."""
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


class DeviceCast:
    """To the weights' torch ``dtype``: a number stays on the host (a NumPy scalar), a tensor
    stays on its device."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.numpy_dtype = np.dtype(str(dtype).removeprefix("torch."))

    def __call__(self, value):
        import torch

        if isinstance(value, torch.Tensor):
            return value.to(self.dtype)
        return np.asarray(value).astype(self.numpy_dtype)[()]


def device_call(optimizer, dtype, sum_squares) -> KernelCall:
    """An empty call for ``optimizer``'s step with weights of torch ``dtype``;
    ``sum_squares(call)`` returns the norm pass's float64 sums as a tensor on the device."""
    stored = optimizer.state_roles.learning_rate
    cast = DeviceCast(dtype)
    return KernelCall(
        iteration=np.int64(optimizer._iterations.host),
        stored_learning_rate=None if stored is None else stored.value,
        xp=optimizer._backend.xp,
        cast=cast,
        cast_array=cast,
        sum_squares=sum_squares,
    )
