"""The PyTorch backend: eager kernels on one device, in-place writes under ``no_grad``.

One backend instance serves one device; the optimizer's state lives there, in
each weight's dtype. The core's math calls ``array_api_compat``'s torch
namespace (NumPy's function names with ``keepdims``, ``astype``, ``pow``, ...).
Imported only once the user's arrays are torch tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from array_api_compat import torch as xp

from polyak.backends.kinds import dtype_name, host_array, kind_of
from polyak.backends.base import Backend

_KINDS = {torch.bool: "b", torch.uint8: "u", torch.uint16: "u", torch.uint32: "u", torch.uint64: "u"}


class TorchBackend(Backend):
    name = "torch"
    xp = xp
    counter_dtype = torch.int64
    float32 = torch.float32
    unwritable_hint = "it is an inference tensor; create it outside `torch.inference_mode()`"

    #: how many distinct ``scalar``s a backend keeps made (then it starts afresh)
    SCALAR_CACHE_SIZE = 256

    def __init__(self, device):
        self.device = torch.device(device)
        self._scalars = {}

    def owns(self, value):
        return isinstance(value, torch.Tensor)

    def asarray(self, value, dtype=None):
        number = np.asarray(value) if isinstance(value, (int, float, np.generic)) else None
        if number is not None and number.dtype.kind in "fiu":  # made on the device: no copy from the host
            return torch.full((), number.item(), dtype=self.dtype(dtype or number.dtype.name), device=self.device)
        if not isinstance(value, torch.Tensor):
            array = host_array(value, transfer=True)
            value = torch.from_numpy(array if array.flags.writeable else array.copy())
        return value.to(device=self.device, dtype=None if dtype is None else self.dtype(dtype))

    def convert(self, value, what):
        if isinstance(value, torch.Tensor):
            if value.layout != torch.strided:
                raise TypeError(f"{what} must be a dense tensor (call `.to_dense()`). Received: layout={value.layout}")
            if value.device != self.device:
                raise ValueError(
                    f"{what} must be on the optimizer's device {self.device}. Received: a tensor on {value.device}"
                )
            return value
        array = host_array(value) if self.device.type == "cpu" else None
        if array is None:
            raise TypeError(
                f"{what} is a {type(value).__name__}, which cannot be converted to a "
                f"torch tensor on {self.device} without a device transfer. Pass a torch tensor on {self.device}."
            )
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{what} must be a real number array. Received: dtype={array.dtype}")
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    def cast(self, value, dtype):
        if isinstance(value, torch.Tensor):
            return value.to(dtype)
        if isinstance(value, (bool, int, float, np.generic)) or (isinstance(value, np.ndarray) and value.ndim == 0):
            return self.scalar(value.item() if isinstance(value, (np.generic, np.ndarray)) else value, dtype)
        return torch.as_tensor(value, dtype=dtype, device=self.device)

    def scalar(self, value, dtype):
        """Made on the device by ``torch.full`` (no copy from the host, so no synchronisation
        on CUDA) and kept: the step's constants are made once per (value, dtype)."""
        if isinstance(value, torch.Tensor):
            return value.to(device=self.device, dtype=dtype)
        key = (repr(value), dtype)  # repr tells -0.0 from 0.0 and finds NaN again
        made = self._scalars.get(key)
        if made is None:
            if len(self._scalars) >= self.SCALAR_CACHE_SIZE:
                self._scalars.clear()
            made = self._scalars[key] = torch.full((), value, dtype=dtype, device=self.device)
        return made

    def zeros_like(self, value):
        return torch.zeros_like(value)

    def copy(self, value):
        return value.detach().clone()

    def dtype(self, spec):
        return spec if isinstance(spec, torch.dtype) else getattr(torch, dtype_name(spec))

    def kind(self, dtype):
        if dtype.is_floating_point:
            return "f"
        if dtype.is_complex:
            return "c"
        return _KINDS.get(dtype, "i")

    def cond(self, pred, true_fn, false_fn):
        """A predicate on the host (a bool, or a CPU tensor) picks a branch; one on another
        device (CUDA, meta) is never read back: both branches run and ``torch.where`` picks
        each value on the device (the same numbers, without a synchronisation)."""
        if isinstance(pred, torch.Tensor) and pred.device.type != "cpu":
            return _select(pred, true_fn(), false_fn())
        return true_fn() if bool(pred) else false_fn()

    def to_numpy(self, value):
        return host_array(value, transfer=True)

    def step_context(self):
        return torch.no_grad()

    def check_devices(self, values, paths):
        for value, path in zip(values, paths):
            if isinstance(value, torch.Tensor) and value.device != self.device:
                raise ValueError(
                    f"All trainable variables of one optimizer must be on one device. Received: {paths[0]!r} "
                    f"is on {self.device} and {path!r} is on {value.device}"
                )

    def writable(self, target):
        return isinstance(target, torch.Tensor) and not target.is_inference()

    def write(self, target, value):
        with torch.no_grad():
            target.copy_(value if isinstance(value, torch.Tensor) else self.asarray(value))


def _select(pred, a, b):
    """``a`` where ``pred`` else ``b``, leaf by leaf over matching lists, tuples and Nones."""
    if a is b or a is None:
        return a
    if isinstance(a, (list, tuple)):
        picked = [_select(pred, x, y) for x, y in zip(a, b, strict=True)]
        return type(a)(*picked) if hasattr(a, "_fields") else type(a)(picked)
    return torch.where(pred, a, b)


_BACKENDS: dict = {}


def torch_backend_for(values, paths) -> TorchBackend:
    """The backend of the device of ``values``, after checking they all sit on it."""
    device = next(v.device for v in values if kind_of(v) == "torch")
    backend = _BACKENDS.setdefault(str(device), TorchBackend(device))
    backend.check_devices(values, paths)
    return backend

