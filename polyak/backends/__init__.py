"""Backends supply array kernels; the optimizer picks one from the arrays it is given."""

from polyak.backends.base import Backend
from polyak.backends.numpy_backend import NUMPY, NumpyBackend

__all__ = ["Backend", "NumpyBackend", "NUMPY", "backend_for"]


def backend_for(values) -> Backend:
    """The backend owning ``values`` (an iterable of arrays). NumPy is the default."""
    return NUMPY


def namespace_for(value):
    """The array namespace of ``value``: NumPy for NumPy arrays and Python numbers."""
    return NUMPY.xp
