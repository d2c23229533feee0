"""Memory bandwidth, measured the STREAM way: a multi-threaded triad ``a = b + s * c``."""

from __future__ import annotations

import time

import numpy as np


def _kernels():
    try:
        from numba import njit, prange
    except ImportError:
        return None

    @njit(parallel=True, cache=True)
    def triad(a, b, c, s):
        for i in prange(a.size):
            a[i] = b[i] + s * c[i]

    @njit(parallel=True, cache=True)
    def update(a, b, c, s):
        for i in prange(a.size):
            a[i] = a[i] + s * b[i]

    return triad, update


def stream_bandwidth(n=48_000_000, repeats=9):
    """Bytes per second: the best of ``repeats`` runs of each streaming kernel.

    The kernels are STREAM's triad ``a = b + s * c`` and the in-place update
    ``a = a + s * b`` (an optimizer's pattern), over float32 arrays far larger
    than cache; each moves 12 bytes per element (two reads, one write). Falls
    back to NumPy's single-threaded ``np.add`` when numba is missing.
    """
    a = np.zeros(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    kernels = _kernels() or (lambda a, b, c, s: np.add(b, c, out=a),)
    s = np.float32(3.0)
    best = float("inf")
    for kernel in kernels:
        kernel(a, b, c, s)
        for _ in range(repeats):
            start = time.perf_counter()
            kernel(a, b, c, s)
            best = min(best, time.perf_counter() - start)
    return 3 * a.nbytes / best
