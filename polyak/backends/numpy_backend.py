"""The embedded NumPy backend: eager kernels, in-place writes into user arrays."""

from __future__ import annotations

import numpy as np

from polyak.backends.base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    float32 = np.dtype("float32")

    def owns(self, value):
        return isinstance(value, (np.ndarray, np.generic))

    def asarray(self, value, dtype=None):
        return np.asarray(value, dtype=dtype)

    def cast(self, value, dtype):
        value = np.asarray(value)
        return value if value.dtype == dtype else value.astype(dtype)

    def scalar(self, value, dtype):
        return np.asarray(value, dtype=dtype)

    def zeros_like(self, value):
        return np.zeros_like(value)

    def is_floating(self, dtype):
        return np.dtype(dtype).kind == "f" or str(dtype) == "bfloat16"

    def cond(self, pred, true_fn, false_fn):
        return true_fn() if bool(pred) else false_fn()

    def to_numpy(self, value):
        return np.asarray(value)

    def quiet(self):
        return np.errstate(divide="ignore", invalid="ignore", over="ignore")

    def writable(self, target):
        return isinstance(target, np.ndarray) and target.flags.writeable

    def write(self, target, value):
        np.copyto(target, value, casting="unsafe")


NUMPY = NumpyBackend()
