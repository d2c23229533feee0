"""Which array library the demo trains on: NumPy (embedded), PyTorch or JAX."""

from __future__ import annotations

import importlib.util

from polyak.demo.errors import DemoError

BACKENDS = ("numpy", "torch", "jax")
_FRAMEWORKS = {
    "torch": ("PyTorch", 'python -m pip install "torch==2.13.0"'),
    "jax": ("JAX", 'python -m pip install "jax[cpu]"'),
}


def make_model(backend: str, hidden, seed):
    """The demo's MLP on ``backend``, or a ``DemoError`` saying what is missing."""
    if backend not in BACKENDS:
        raise DemoError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numpy":
        from polyak.demo.mlp import NumpyMLP

        return NumpyMLP(hidden, seed)
    framework, install = _FRAMEWORKS[backend]
    if importlib.util.find_spec(backend) is None:
        raise DemoError(f"--backend {backend} needs {framework}, which is not installed: {install}")
    raise DemoError(
        f"--backend {backend}: this version of polyak trains NumPy arrays only; {framework} support is "
        "on its way. Use --backend numpy."
    )
