"""Backends supply array kernels; the optimizer picks one from the arrays it is given.

The kind of an array is read from its type (``polyak.backends.kinds``) without
importing any framework: importing polyak imports neither PyTorch nor JAX, and
works with neither installed.
"""

from __future__ import annotations

from polyak.backends.base import Backend
from polyak.backends.kinds import TYPE_NAMES, dtype_name, host_array, kind_of
from polyak.backends.numpy_backend import NUMPY, NumpyBackend

__all__ = ["Backend", "NumpyBackend", "NUMPY", "backend_for", "kind_of", "namespace_for", "host_array", "dtype_name"]


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
                f"Received: {first[1]!r} is a {TYPE_NAMES[first[0]]} and {path!r} is a {TYPE_NAMES[kind]}"
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


