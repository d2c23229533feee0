"""Memory bandwidth, measured the STREAM way, as one more contender of a workload.

The probe is STREAM's in-place update ``a = a + s * b`` (an optimizer's own
pattern: two reads and one write of the same array, no write-allocate traffic)
over float32 arrays far larger than cache, run on every core by numba. The
harness times it interleaved with the steps it is compared to, so that the
floor and the steps see the same moments of a shared machine.
"""

from __future__ import annotations

import numpy as np

#: Bytes the probe moves per element: read ``a`` and ``b``, write ``a``.
BYTES_PER_ELEMENT = 12


def _update_kernel():
    try:
        from numba import njit, prange
    except ImportError:
        return None

    @njit(parallel=True, cache=True)
    def update(a, b, s):
        for i in prange(a.size):
            a[i] = a[i] + s * b[i]

    return update


class StreamProbe:
    """One call streams ``bytes_per_call`` through memory; ``bandwidth(seconds)`` converts
    a call's duration to bytes per second. Falls back to NumPy's single-threaded
    ``np.add`` when numba is missing."""

    def __init__(self, n=48_000_000):
        self.a = np.zeros(n, np.float32)
        self.b = np.ones(n, np.float32)
        self.bytes_per_call = BYTES_PER_ELEMENT * n
        kernel = _update_kernel()
        s = np.float32(1e-3)
        self._call = (lambda: kernel(self.a, self.b, s)) if kernel else (lambda: np.add(self.a, self.b, out=self.a))
        self._call()  # compile and fault the pages in

    def __call__(self):
        self._call()

    def bandwidth(self, seconds):
        return self.bytes_per_call / seconds
