"""Numba building blocks of the fused NumPy step: addresses, pointers, norms.

A fused step walks a list of chunks (tensor, start, stop) in parallel
(serially for small models, where waking threads costs more than it saves),
reaching each weight and gradient through its address and the optimizer state
through flat buffers. The update kernel itself is generated per configuration
(``numpy_codegen``); per element it performs exactly the arithmetic of
``polyak.core`` (same operations, same order, same dtype), so its results equal
the reference step's; only norms (for clipping) are summed in another order.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _pointer_like(typingctx, address, like):
    """The integer ``address`` as a pointer to ``like``'s element type."""
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


@njit(cache=True)
def _address(a):
    return a.ctypes.data if a.flags.c_contiguous else -1


@njit(cache=True)
def _addresses8(a, b, c, d, e, f, g, h):
    return (_address(a), _address(b), _address(c), _address(d),
            _address(e), _address(f), _address(g), _address(h))


def addresses(arrays):
    """Data addresses of arrays, read eight at a time inside numba; -1 for an array
    that is not C-contiguous."""
    out = np.empty(len(arrays), np.int64)
    n8 = len(arrays) - len(arrays) % 8
    for i in range(0, n8, 8):
        out[i:i + 8] = _addresses8(*arrays[i:i + 8])
    for i in range(n8, len(arrays)):
        out[i] = _address(arrays[i])
    return out


#: Threads pay off once a step touches enough memory; below that a serial loop wins.
PARALLEL_FROM = 1 << 18  # elements

