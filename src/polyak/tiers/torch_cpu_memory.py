"""The fused step's access to PyTorch tensors on the CPU.

The kernel of ``cpu_fused`` updates memory through addresses, so CPU tensors
take the same kernel as NumPy arrays: weights and gradients through
``data_ptr()``, optimizer state in flat NumPy buffers that the state tensors
share (``torch.from_numpy``). The writes bypass autograd's version counter, as
any optimizer step runs outside autograd.
"""

from __future__ import annotations

import numpy as np
import torch

_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
#: tensor types whose memory the kernel may write (a subclass, e.g. DTensor, may not be one buffer)
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class TorchCPUMemory:
    @staticmethod
    def dtype_of(values):
        dtype = values[0].dtype
        ok = dtype in _DTYPES and all(
            type(t) in _PLAIN and t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()
            and t.layout == torch.strided
            for t in values
        )
        return _DTYPES[dtype] if ok else None

    @staticmethod
    def addresses(state, values):
        if len(values) != len(state.shapes):
            return None
        torch_dtype = next(t for t, d in _DTYPES.items() if d == state.dtype)
        found = []
        for t, shape in zip(values, state.shapes):
            if not (type(t) in _PLAIN and t.is_cpu and t.dtype is torch_dtype and t.shape == shape
                    and t.is_contiguous()):
                return None
            found.append(t.data_ptr())
        return np.array(found, np.int64)

    @staticmethod
    def moved(state):
        """Whether any weight's storage changed since the state read its address."""
        return [t.data_ptr() for t in state.weights] != state.weight_list

    @staticmethod
    def wrap(view):
        return torch.from_numpy(view)
