"""How a fused tier fills its :class:`~polyak.core.kernel_call.KernelCall`: on the host, or
keeping on the device what lives there.

Both take the count from the optimizer's host copy and cast every scalar to the step's dtype
(the weights', or float32 for master weights) before it reaches the kernel. After a step
guarded on the device (``polyak.tiers.guards``) the host copy is unknown; :func:`device_call`
then reads the count back only for a plan that decides on it (:func:`needs_count`):

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
        cast=lambda value: scalar(np.asarray(value)),
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


def needs_count(optimizer, plan) -> bool:
    """Whether a step of ``plan`` decides on the iteration count: whether it accumulates, keeps
    an EMA (its first step, its overwrites) or takes its rate from a schedule or callable."""
    return bool(plan.gradient_accumulation_steps or plan.use_ema or optimizer.state_roles.learning_rate is None)


def device_call(optimizer, plan, dtype, sum_squares) -> KernelCall:
    """An empty call for ``optimizer``'s step of ``plan`` computed in torch ``dtype`` (the
    weights', or float32 for 16-bit weights with master weights);
    ``sum_squares(call)`` returns the norm pass's float64 sums as a tensor on the device.
    ``iteration`` is None when the host copy of the count is unknown and ``plan`` needs none."""
    stored = optimizer.state_roles.learning_rate
    cast = DeviceCast(dtype)
    count = optimizer._iterations
    known = count.known_host
    if known is None and needs_count(optimizer, plan):
        known = count.host  # reads the device: once per step after a step guarded there
    return KernelCall(
        iteration=None if known is None else np.int64(known),
        stored_learning_rate=None if stored is None else stored.value,
        xp=optimizer._backend.xp,
        cast=cast,
        cast_array=cast,
        sum_squares=sum_squares,
    )
