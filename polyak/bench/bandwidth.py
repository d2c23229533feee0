"""Memory bandwidth, measured the STREAM way: a multi-threaded triad ``a = b + s * c``."""

from __future__ import annotations

import time

import numpy as np


def _triad_kernel():
    try:
        from numba import njit, prange
    except ImportError:
        return None

    @njit(parallel=True, cache=True)
    def triad(a, b, c, s):
        for i in prange(a.size):
            a[i] = b[i] + s * c[i]

    return triad


def stream_bandwidth(n=48_000_000, repeats=7):
    """Bytes per second moved by the best of ``repeats`` triads over three float32 arrays.

    Counts 12 bytes per element (two reads, one write), as STREAM does. Falls
    back to NumPy's single-threaded ``np.add`` when numba is missing.
    """
    a = np.zeros(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    triad = _triad_kernel()
    if triad is None:
        def triad(a, b, c, s):
            np.add(b, c, out=a)
    s = np.float32(3.0)
    triad(a, b, c, s)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        triad(a, b, c, s)
        best = min(best, time.perf_counter() - start)
    return 3 * a.nbytes / best
