"""Which array library the demo trains on: NumPy (embedded), PyTorch or JAX."""

from __future__ import annotations

import importlib.util

from polyak.demo.errors import DemoError

BACKENDS = ("numpy", "torch", "jax")
_FRAMEWORKS = {
    "torch": ("PyTorch", 'python -m pip install "torch==2.13.0"'),
    "jax": ("JAX", 'python -m pip install "jax[cpu]"'),
}


def _numpy_model(hidden, seed):
    from polyak.demo.mlp import NumpyMLP

    return NumpyMLP(hidden, seed)


def _torch_model(hidden, seed):
    from polyak.demo.torch_mlp import TorchMLP

    return TorchMLP(hidden, seed)


def _jax_model(hidden, seed):
    from polyak.demo.jax_mlp import JaxMLP

    return JaxMLP(hidden, seed)


# Each model has the interface of ``NumpyMLP``: ``sizes``, ``weights``, ``parameter_count``,
# ``loss_and_grads``, ``apply_gradients``, ``evaluate``, ``state`` and ``load_state``.
_MODELS = {"numpy": _numpy_model, "torch": _torch_model, "jax": _jax_model}


def make_model(backend: str, hidden, seed):
    """The demo's MLP on ``backend``, or a ``DemoError`` saying what is missing."""
    if backend not in BACKENDS:
        raise DemoError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    require_framework(backend)
    return _MODELS[backend](hidden, seed)


def require_framework(backend: str) -> None:
    """Raise a ``DemoError`` that says how to install ``backend``'s framework when it is missing."""
    if backend in _FRAMEWORKS and importlib.util.find_spec(backend) is None:
        framework, install = _FRAMEWORKS[backend]
        raise DemoError(f"--backend {backend} needs {framework}, which is not installed: {install}")
