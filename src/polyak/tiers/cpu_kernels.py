"""Numba building blocks of the fused NumPy step: addresses, pointers, norms.

A fused step walks a list of chunks (tensor, start, stop) in parallel
(serially for small models, where waking threads costs more than it saves),
reaching each weight and gradient through its address and the optimizer state
through flat buffers. The update kernel itself is generated per configuration
(``cpu_codegen``); per element it performs exactly the arithmetic of
``polyak.core.stages`` (same operations, same order, same dtype), so its results equal
the reference step's; only norms (for clipping) are summed in another order.
"""

from __future__ import annotations

import operator
import os

import numba
import numpy as np
from numba import njit, typeof, types
from numba.extending import intrinsic


@intrinsic
def _pointer_like(typingctx, address, like):
    """The integer ``address`` as a pointer to ``like``'s element type."""
    pointer = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, like), codegen


@njit(inline="always")
def clip(x, lo, hi):
    """The stages' ``clip``: ``x`` limited to ``[lo, hi]`` as ``np.clip`` does it, NaN kept."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


@njit(cache=True)
def _address(a):
    return a.ctypes.data if a.flags.c_contiguous else -1


@njit(cache=True)
def _addresses16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15):
    return (_address(a0), _address(a1), _address(a2), _address(a3), _address(a4), _address(a5), _address(a6),
            _address(a7), _address(a8), _address(a9), _address(a10), _address(a11), _address(a12),
            _address(a13), _address(a14), _address(a15))


class AddressReader:
    """Reads the data addresses of a list of arrays laid out like ``ndims``, sixteen per call into numba.

    Arrays of one dimensionality share a call, the last call of each padded with
    repeats, so numba compiles one variant per dimensionality rather than one per
    mix. An address is -1 for an array that is not C-contiguous.
    """

    GROUP = 16

    def __init__(self, ndims):
        by_ndim = {}
        for i, ndim in enumerate(ndims):
            by_ndim.setdefault(ndim, []).append(i)
        self._getters = []
        #: where array i's address lands in the concatenated results of the calls
        self._take = np.empty(len(ndims), np.int64)
        for members in by_ndim.values():
            for first in range(0, len(members), self.GROUP):
                group = members[first:first + self.GROUP]
                self._take[group] = self.GROUP * len(self._getters) + np.arange(len(group))
                self._getters.append(operator.itemgetter(*group, *[group[0]] * (self.GROUP - len(group))))

    @staticmethod
    def compile_for(dtype, ndims):
        """Compile the reader for C-contiguous arrays of ``dtype`` in each of ``ndims``."""
        for ndim in ndims:
            _addresses16.compile((typeof(np.zeros((0,) * ndim, dtype)),) * AddressReader.GROUP)

    def __call__(self, arrays):
        found = []
        for get in self._getters:
            found += _addresses16(*get(arrays))
        return np.array(found, np.int64)[self._take]


def threads_usable() -> bool:
    """Whether this process may run the parallel kernels: not in a child forked after numba
    started its OpenMP threads. GNU OpenMP ends such a child at its first parallel region
    ("fork() called from a process already using GNU OpenMP"), so the child takes the serial
    kernels, which give the same numbers; TBB and numba's workqueue survive a fork."""
    return not _threads_inherited


_threads_inherited = False


def _after_fork_in_child():
    global _threads_inherited
    try:
        layer = numba.threading_layer()
    except ValueError:  # no thread started yet: the child starts its own
        return
    _threads_inherited = _threads_inherited or layer == "omp"


os.register_at_fork(after_in_child=_after_fork_in_child)

