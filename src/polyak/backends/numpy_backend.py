"""The embedded NumPy backend: eager kernels, in-place writes into user arrays."""

from __future__ import annotations

import numpy as np

from polyak.backends.base import Backend
from polyak.backends.kinds import host_array


def _numpy_dtype(spec):
    if spec is None or isinstance(spec, np.dtype):
        return spec
    text = str(spec)
    return np.dtype(text[len("torch."):] if text.startswith("torch.") else spec)


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    counter_dtype = np.dtype("int64")
    float32 = np.dtype("float32")
    unwritable_hint = "it is a read-only array; pass a writable array (e.g. `array.copy()`) or a polyak.Variable"

    def owns(self, value):
        return isinstance(value, (np.ndarray, np.generic))

    def asarray(self, value, dtype=None):
        if isinstance(value, np.ndarray) and dtype is None:
            return value
        return np.asarray(host_array(value, transfer=True), dtype=_numpy_dtype(dtype))

    def convert(self, value, what):
        if isinstance(value, np.ndarray):
            return value
        converted = host_array(value)
        if converted is None:
            raise TypeError(
                f"{what} is a {type(value).__name__}, which cannot be read as a NumPy array without a device "
                "transfer (or is traced). The optimizer's weights are NumPy arrays: pass a NumPy array."
            )
        return converted

    def cast(self, value, dtype):
        value = np.asarray(value)
        return value if value.dtype == dtype else value.astype(dtype)

    def scalar(self, value, dtype):
        return np.asarray(value, dtype=dtype)

    def zeros_like(self, value):
        return np.zeros_like(value)

    def copy(self, value):
        return np.array(value, copy=True)

    def dtype(self, spec):
        return _numpy_dtype(spec)

    def kind(self, dtype):
        kind = np.dtype(dtype).kind
        return "f" if kind == "V" and str(dtype) == "bfloat16" else kind

    def cond(self, pred, true_fn, false_fn):
        return true_fn() if bool(pred) else false_fn()

    def to_numpy(self, value):
        return np.asarray(value)

    def step_context(self):
        return np.errstate(divide="ignore", invalid="ignore", over="ignore")

    def writable(self, target):
        return isinstance(target, np.ndarray) and target.flags.writeable

    def write(self, target, value):
        np.copyto(target, value, casting="unsafe")


NUMPY = NumpyBackend()
