"""The fused SGD step on NumPy weights: flat optimizer state, one kernel call per step.

At the first eligible ``apply`` the optimizer's per-weight state (velocity, EMA
average, gradient accumulator) is moved into one flat buffer per role; each
``Variable`` keeps a view into it, so ``variables``, ``assign`` and the stores
behave as before. Weights and gradients stay where the user keeps them and are
reached through their addresses.

The same kernel serves PyTorch tensors on the CPU (``torch_fused``): their
memory is reached the same way, and the state buffers are shared with torch.

Eligible: every weight a C-contiguous float32 or float64 array of one dtype,
none with a constraint or ``overwrite_with_gradient``; every gradient present,
C-contiguous, of the weights' dtype and shape. Anything else takes the
reference step, which gives the same numbers.
"""

from __future__ import annotations

import numpy as np

from polyak.backends import numpy_codegen
from polyak.core.fused import CLIP_GLOBAL, CLIP_NORM, FusedCall

CHUNK = 1 << 15  #: elements per parallel work item
kernels = None  #: the numba kernels module, imported at the first fused step


def available() -> bool:
    """Whether numba is installed (imported on first use, to keep ``import polyak`` fast)."""
    global kernels
    if kernels is None:
        try:
            from polyak.backends import numpy_kernels
        except ImportError:  # numba is not installed: the reference step serves
            return False
        kernels = numpy_kernels
    return True


class NumpyMemory:
    """How the fused step reaches NumPy arrays."""

    @staticmethod
    def dtype_of(values):
        """The weights' common NumPy dtype if the kernel can update them all in place, else None."""
        dtype = values[0].dtype
        ok = dtype in (np.float32, np.float64) and all(
            type(v) is np.ndarray and v.dtype == dtype and v.flags.c_contiguous for v in values
        )
        return dtype if ok else None

    @staticmethod
    def address_reader(dtype, shapes):
        """A function of a list of arrays: their addresses if all are C-contiguous arrays of
        ``dtype`` and ``shapes``, else None."""
        read = kernels.AddressReader([len(shape) for shape in shapes])

        def addresses(values):
            if len(values) != len(shapes) or not all(
                type(g) is np.ndarray and g.dtype is dtype and g.shape == shape for g, shape in zip(values, shapes)
            ):
                return None
            found = read(values)
            return None if (found < 0).any() else found

        return addresses

    @staticmethod
    def wrap(view):
        """The optimizer variable's value for a view into a flat state buffer."""
        return view


def memory_for(backend):
    """The memory adapter for ``backend``'s arrays, or None if the kernel cannot reach them."""
    if backend.name == "numpy":
        return NumpyMemory
    if backend.name == "torch" and backend.device.type == "cpu":
        from polyak.backends.torch_fused import TorchCPUMemory

        return TorchCPUMemory
    return None


class FusedSGD:
    """A fused step bound to one list of weights and the state Variables of each role."""

    def __init__(self, memory, dtype, variables, weights, velocities, averages, accumulators, decay_mask):
        self.memory = memory
        self.weights = list(weights)
        #: the weights held by Variables (plain arrays never change storage)
        self._held = [(v, w) for v, w in zip(variables, self.weights) if v is not w]
        self.dtype = np.dtype(dtype)
        self.shapes = [tuple(w.shape) for w in self.weights]
        self.sizes = np.array([int(np.prod(shape)) for shape in self.shapes], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.decay = np.array(decay_mask, np.uint8)
        self._read_addresses = memory.address_reader(dtype, [w.shape for w in self.weights])
        self.weight_addresses = self._read_addresses(self.weights)
        empty = np.zeros(0, self.dtype)
        self.velocity = self._pack(velocities) if velocities else empty
        self.average = self._pack(averages) if averages else empty
        self.accumulator = self._pack(accumulators) if accumulators else empty
        chunks = [(t, start, min(start + CHUNK, size))
                  for t, size in enumerate(self.sizes) for start in range(0, max(int(size), 1), CHUNK)]
        self.chunk_tensor, self.chunk_start, self.chunk_stop = (np.array(c, np.int64) for c in zip(*chunks))
        self._chunk_sums = np.zeros(len(chunks), np.float64)
        self.parallel = bool(self.sizes.sum() >= kernels.PARALLEL_FROM)
        self._no_denominators = np.ones(len(self.weights), self.dtype)

    def _pack(self, variables):
        """One flat buffer holding every variable's value; each variable rebinds to its view."""
        flat = np.empty(int(self.sizes.sum()), self.dtype)
        for variable, offset, size, shape in zip(variables, self.offsets, self.sizes, self.shapes):
            view = flat[offset:offset + size].reshape(shape)
            variable._rebind(self.memory.wrap(view))
        return flat

    def still_bound(self) -> bool:
        """Whether every Variable among the weights still holds the array the kernel writes."""
        return all(v._value is w for v, w in self._held)

    def gradient_addresses(self, grads):
        """The gradients' addresses, or None unless every gradient is a contiguous array of
        the weights' kind, dtype and shape."""
        return self._read_addresses(grads)

    def sum_squares(self, grad_addresses, mode, loss_scale, accumulation_steps):
        """Per tensor, the sum of squares of the gradient the update will use (float64)."""
        s = self.dtype.type
        kernel = numpy_codegen.load_sum_squares(self.parallel, mode, bool(loss_scale))
        kernel(self.chunk_tensor, self.chunk_start, self.chunk_stop, grad_addresses, self.sizes, self.offsets,
               self.accumulator, s(loss_scale), s(accumulation_steps), self._chunk_sums)
        return np.bincount(self.chunk_tensor, weights=self._chunk_sums, minlength=len(self.weights))

    def run(self, grad_addresses, call: FusedCall, momentum, nesterov):
        """One fused step; every scalar is passed as a scalar of the weights' dtype."""
        s = self.dtype.type
        use_ema = self.average.size > 0
        kernel = numpy_codegen.load_kernel(
            self.parallel, call.mode, bool(call.loss_scale), call.clip, bool(self.decay.any()),
            momentum != 0, bool(nesterov), use_ema, bool(call.ema_overwrite),
        )
        kernel(
            self.chunk_tensor, self.chunk_start, self.chunk_stop, self.weight_addresses, grad_addresses,
            self.sizes, self.offsets, self.velocity, self.average, self.accumulator, self.decay,
            call.denominators if call.clip == CLIP_NORM else self._no_denominators,
            s(call.loss_scale), s(call.accumulation_steps), s(call.clip_value),
            s(call.global_scale) if call.clip == CLIP_GLOBAL else s(1),
            s(call.learning_rate), s(call.weight_decay), s(momentum), s(call.ema_m), s(call.ema_1m),
        )
