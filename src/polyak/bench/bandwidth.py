"""Memory bandwidth, measured the STREAM way, as one more contender of a workload.

The probe is STREAM's in-place update ``a = a + s * b`` (an optimizer's own
pattern: two reads and one write of the same array, no write-allocate traffic)
over float32 arrays far larger than cache, run on every core by numba. The
harness times it interleaved with the steps it is compared to, so that the
floor and the steps see the same moments of a shared machine. On a GPU
(``CudaStreamProbe``) the same update runs as one PyTorch kernel over arrays far
larger than the GPU's cache.
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


class CudaStreamProbe:
    """The same update, ``a += s * b`` in float32, on the current CUDA device; a call
    returns once the GPU has finished it."""

    def __init__(self, n=256_000_000):
        import torch

        self._torch = torch
        self.a = torch.zeros(n, dtype=torch.float32, device="cuda")
        self.b = torch.ones(n, dtype=torch.float32, device="cuda")
        self.bytes_per_call = BYTES_PER_ELEMENT * n
        self()

    def __call__(self):
        self.a.add_(self.b, alpha=1e-3)
        self._torch.cuda.synchronize()

    def bandwidth(self, seconds):
        return self.bytes_per_call / seconds


def probe_for(device):
    """The stream probe for ``device`` ("cpu" or "cuda")."""
    return CudaStreamProbe() if device == "cuda" else StreamProbe()
