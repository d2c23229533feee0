"""Backends supply array kernels; the optimizer picks one from the arrays it is given.

The kind of an array is read from its type without importing any framework: a
value can only be a ``torch.Tensor`` if ``torch`` is already imported, so
``sys.modules`` is consulted instead of ``import torch``. Importing polyak
imports neither PyTorch nor JAX, and works with neither installed.
"""

from __future__ import annotations

import sys

import numpy as np

from polyak.backends.base import Backend
from polyak.backends.numpy_backend import NUMPY, NumpyBackend

__all__ = ["Backend", "NumpyBackend", "NUMPY", "backend_for", "kind_of", "namespace_for", "host_array"]

_TYPE_NAMES = {"numpy": "numpy.ndarray", "torch": "torch.Tensor", "jax": "jax.Array"}


def kind_of(value):
    """"numpy", "torch" or "jax" for an array of that kind (JAX tracers included), else None."""
    if isinstance(value, (np.ndarray, np.generic)):
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(value, jax.Array):
        return "jax"
    return None


def _backend_of_kind(kind, values, paths):
    if kind == "torch":
        from polyak.backends.torch_backend import torch_backend_for

        return torch_backend_for(values, paths)
    if kind == "jax":
        from polyak.backends.jax_backend import JAX

        JAX.check_devices(values, paths)
        return JAX
    return NUMPY


def backend_for(values, paths=None) -> Backend:
    """The backend owning ``values`` (arrays; numbers and lists count as NumPy).

    Raises ``TypeError`` when arrays of different kinds are mixed and
    ``ValueError`` when torch or JAX arrays sit on different devices; ``paths``
    name the values in those messages (``variable_{i}`` by default).
    """
    values = list(values)
    paths = list(paths) if paths is not None else [f"variable_{i}" for i in range(len(values))]
    first = None
    for value, path in zip(values, paths):
        kind = kind_of(value) or "numpy"
        if first is None:
            first = (kind, path)
        elif kind != first[0]:
            raise TypeError(
                "All trainable variables of one optimizer must be arrays of one kind (NumPy, PyTorch or JAX). "
                f"Received: {first[1]!r} is a {_TYPE_NAMES[first[0]]} and {path!r} is a {_TYPE_NAMES[kind]}"
            )
    if first is None or first[0] == "numpy":
        return NUMPY
    return _backend_of_kind(first[0], values, paths)


def namespace_for(value):
    """The array namespace of ``value``: NumPy for NumPy arrays and Python numbers."""
    kind = kind_of(value)
    if kind is None or kind == "numpy":
        return NUMPY.xp
    return _backend_of_kind(kind, [value], ["value"]).xp


def host_array(value, transfer=False):
    """``value`` as a NumPy array. Without ``transfer``, only when that needs no device
    transfer (NumPy data, numbers, lists, CPU tensors and CPU JAX arrays), else None."""
    kind = kind_of(value)
    if kind == "torch":
        if value.device.type != "cpu" and not transfer:
            return None
        value = value.detach().cpu()
        return value.float().numpy() if str(value.dtype) == "torch.bfloat16" else value.numpy()
    if kind == "jax" and not transfer:
        jax = sys.modules["jax"]
        if isinstance(value, jax.core.Tracer) or any(d.platform != "cpu" for d in value.devices()):
            return None
    return np.asarray(value)


def dtype_name(spec) -> str:
    """"float32", "bfloat16", ... for a dtype name or a NumPy, PyTorch or JAX dtype."""
    if isinstance(spec, str):
        return spec
    text = str(spec)
    if text.startswith("torch."):
        return text[len("torch."):]
    return np.dtype(spec).name
