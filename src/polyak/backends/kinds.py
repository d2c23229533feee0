"""What kind of array a value is, read from its type without importing any framework.

A value can only be a ``torch.Tensor`` if ``torch`` is already imported, so
``sys.modules`` is consulted instead of ``import torch``. The backends import
this module; it imports none of them.
"""

from __future__ import annotations

import sys

import numpy as np

TYPE_NAMES = {"numpy": "numpy.ndarray", "torch": "torch.Tensor", "jax": "jax.Array"}


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
