"""Fused multi-tensor SGD kernels for NumPy, compiled with numba.

One call updates every weight: the kernel walks a list of chunks (tensor,
start, stop) in parallel, reading each weight and gradient through its address
and the optimizer state from flat buffers, and writes weight, velocity, EMA and
accumulator in the same pass. Per element it performs exactly the arithmetic
of ``polyak.core`` (same operations, same order, same dtype), so its results
equal the reference step's; only a norm (clipping) is summed in another order.

Modes of a call (``mode``):
    0  update with this gradient
    1  accumulate only: ``acc <- g + acc``; the weight is unchanged
    2  update with the accumulated mean ``(g + acc) / n``, then ``acc <- 0``
Clipping (``clip``): 0 none, 1 per-tensor norm (``g * c / denom[t]``),
2 by value, 3 global norm (``g * scale``).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from polyak.core.fused import ACCUMULATE, CLIP_GLOBAL, CLIP_NORM, CLIP_VALUE, FROM_ACCUMULATED


@intrinsic
def _pointer_like(typingctx, address, like):
    """The integer ``address`` as a pointer to ``like``'s element type."""
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


@njit(cache=True)
def _address(a):
    return a.ctypes.data


@njit(cache=True)
def _addresses8(a, b, c, d, e, f, g, h):
    return (a.ctypes.data, b.ctypes.data, c.ctypes.data, d.ctypes.data,
            e.ctypes.data, f.ctypes.data, g.ctypes.data, h.ctypes.data)


def addresses(arrays):
    """Data addresses of C-contiguous arrays, read eight at a time inside numba."""
    out = np.empty(len(arrays), np.int64)
    n8 = len(arrays) - len(arrays) % 8
    for i in range(0, n8, 8):
        out[i:i + 8] = _addresses8(*arrays[i:i + 8])
    for i in range(n8, len(arrays)):
        out[i] = _address(arrays[i])
    return out


@njit(parallel=True, cache=True)
def sum_squares(chunk_tensor, chunk_start, chunk_stop, grad_addr, sizes, offsets, acc, mode, loss_scale,
                n_acc, out):
    """``out[c]``: the sum of squares over chunk ``c`` of the gradient the update will use."""
    for c in prange(chunk_tensor.size):
        t = chunk_tensor[c]
        g = carray(_pointer_like(grad_addr[t], acc), sizes[t])
        off = offsets[t]
        total = 0.0
        for i in range(chunk_start[c], chunk_stop[c]):
            x = g[i]
            if loss_scale != 0:
                x = x / loss_scale
            if mode == FROM_ACCUMULATED:
                x = (x + acc[off + i]) / n_acc
            total += x * x
        out[c] = total


@njit(parallel=True, cache=True)
def sgd_step(chunk_tensor, chunk_start, chunk_stop, param_addr, grad_addr, sizes, offsets,
             velocity, average, acc, decay, denominators,
             mode, loss_scale, n_acc, clip, clip_value, global_scale,
             lr, weight_decay, momentum, use_momentum, nesterov,
             use_ema, ema_m, ema_1m, ema_overwrite):
    for c in prange(chunk_tensor.size):
        t = chunk_tensor[c]
        w = carray(_pointer_like(param_addr[t], velocity), sizes[t])
        g = carray(_pointer_like(grad_addr[t], velocity), sizes[t])
        off = offsets[t]
        decays = decay[t]
        for i in range(chunk_start[c], chunk_stop[c]):
            j = off + i
            x = g[i]
            if loss_scale != 0:
                x = x / loss_scale
            wv = w[i]
            if mode == ACCUMULATE:
                acc[j] = x + acc[j]
            else:
                if mode == FROM_ACCUMULATED:
                    x = (x + acc[j]) / n_acc
                    acc[j] = 0
                if clip == CLIP_NORM:
                    x = (x * clip_value) / denominators[t]
                elif clip == CLIP_VALUE:
                    if x < -clip_value:
                        x = -clip_value
                    elif x > clip_value:
                        x = clip_value
                elif clip == CLIP_GLOBAL:
                    x = x * global_scale
                if decays:
                    wv = wv - wv * weight_decay * lr
                if use_momentum:
                    v = velocity[j] * momentum - x * lr
                    velocity[j] = v
                    if nesterov:
                        wv = wv + (v * momentum - x * lr)
                    else:
                        wv = wv + v
                else:
                    wv = wv - x * lr
            if use_ema:
                a = ema_m * average[j] + ema_1m * wv
                average[j] = a
                if ema_overwrite:
                    wv = a
            w[i] = wv
