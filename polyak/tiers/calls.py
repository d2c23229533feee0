"""How a fused tier fills its :class:`~polyak.core.kernel_call.KernelCall`: on the host, or
keeping on the device what lives there.

Both take the count from the optimizer's host copy (no device read) and cast every scalar
to the step's dtype (the weights', or float32 for master weights) before it reaches the kernel:

* :func:`host_call` (the CPU tier): the stored rate read as a NumPy scalar, NumPy for the
  norms' arithmetic;
* :func:`device_call` (the Triton and foreach tiers): a number known on the host stays a
  NumPy scalar, while what lives on the device (the stored rate, the norm pass's sums and
  what clipping computes from them) stays a tensor there, in the backend's array namespace,
  so a step never waits for the device.
"""

from __future__ import annotations

import numpy as np

from polyak.backends.kinds import dtype_name
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
    """To the step's torch ``dtype``: a number stays on the host (a NumPy scalar), a tensor
    stays on its device.

    A number cast to float16 or bfloat16 (which NumPy cannot hold: it has no bfloat16) is
    rounded as the reference's ``torch.full((), v, dtype)`` rounds it (to float32, then to 16
    bits) and held, exactly, in a NumPy float32; arithmetic on it (the EMA's ``1 - m``) is
    then float32's, as torch computes a 16-bit operation, and is rounded again when cast."""

    def __init__(self, dtype):
        self.dtype = dtype
        name = dtype_name(dtype)
        self.sixteen_bit = name in ("float16", "bfloat16")
        #: the NumPy dtype a number is held in
        self.numpy_dtype = np.dtype(np.float32 if self.sixteen_bit else name)

    def __call__(self, value):
        import torch

        if isinstance(value, torch.Tensor):
            return value.to(self.dtype)
        if self.sixteen_bit:
            rounded = torch.from_numpy(np.array(value, np.float64)).to(self.dtype).to(torch.float32)
            return rounded.numpy()[()]
        return np.asarray(value).astype(self.numpy_dtype)[()]


def device_call(optimizer, dtype, sum_squares) -> KernelCall:
    """An empty call for ``optimizer``'s step computed in torch ``dtype`` (the weights', or
    float32 for 16-bit weights with master weights);
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
