"""The CPU fused tier: flat optimizer state, one generated numba kernel call per step.

At the first step this tier takes, the optimizer's per-weight state (each role of
``optimizer.state_roles``: velocity, EMA average, gradient accumulator) is moved into one
flat buffer per role; each ``Variable`` keeps a view into it, so ``variables``, ``assign``
and the stores behave as before. Weights and gradients stay where the user keeps them and
are reached through their addresses. The kernel is written from the stages' statements
(``polyak.core.stages``) for each call, and the scalars are decided by the same stages.

The same kernel serves PyTorch tensors on the CPU (``torch_cpu_memory``): their memory is
reached the same way, and the state buffers are shared with torch.

Takes a step when: numba is installed; every weight is a plain, C-contiguous float32 or
float64 array (or CPU tensor, no subclass) of one dtype; every stage can be fused for the
plan (no constraint, no ``overwrite_with_gradient``, a rule with per-element statements;
``skip_nonfinite`` and a ``LossScaleOptimizer``'s guard through ``guards``, the flag made on
the host of what the stages computed); every weight is stepped and every gradient is a C-contiguous array
of its weight's kind, dtype and shape. Anything else takes the reference tier, which gives
the same numbers.

Numba and the kernels load in a background thread (``polyak.tiers.background``) while the
reference tier takes the first steps, except with norm clipping, whose norms this tier sums
in another order: there the first step waits for them, so that no number depends on timing.
A guarded step also waits: its flag comes from the norm pass. A kernel that the disk cache
(``kernel_cache``) holds compiled is loaded in the foreground, numba with it: the first step
that can take this tier takes it, as in the steps after.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np

from polyak.core import nonfinite, stages
from polyak.optimizers import parameters as params_mod
from polyak.optimizers.state_roles import MASTER
from polyak.tiers import background, cpu_codegen, reference
from polyak.tiers.calls import host_call

CHUNK = 1 << 15  #: elements per parallel work item
#: Threads pay off once a step touches enough memory; below that a serial loop wins.
PARALLEL_FROM = 1 << 18  # elements
kernels = None  #: the numba kernels module, imported at the first fused step


def available() -> bool:
    """Whether numba is installed (imported on first use, to keep ``import polyak`` fast)."""
    global kernels
    if kernels is None:
        try:
            from polyak.tiers import cpu_kernels
        except ImportError:  # numba is not installed: the reference step serves
            return False
        kernels = cpu_kernels
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
    def addresses(state, values):
        """The addresses of ``values`` if all are C-contiguous NumPy arrays of the state's dtype
        and shapes, else None."""
        if len(values) != len(state.shapes) or not all(
                type(g) is np.ndarray and g.dtype is state.dtype and g.shape == shape
                for g, shape in zip(values, state.shapes)):
            return None
        found = state._reader(values)
        return None if (found < 0).any() else found

    @staticmethod
    def moved(state):
        """A NumPy array never changes its storage."""
        return False

    @staticmethod
    def wrap(view):
        """The optimizer variable's value for a view into a flat state buffer."""
        return view


def memory_for(backend):
    """The memory adapter for ``backend``'s arrays, or None if the kernel cannot reach them."""
    if backend.name == "numpy":
        return NumpyMemory
    if backend.name == "torch" and backend.device.type == "cpu":
        from polyak.tiers.torch_cpu_memory import TorchCPUMemory

        return TorchCPUMemory
    return None


class FusedState:
    """What the tier keeps for one optimizer's built weights: flat state, addresses, chunks."""

    def __init__(self, memory, dtype, variables, weights, per_weight, decay_mask):
        self.memory = memory
        self.weights = list(weights)
        #: the weights held by Variables (plain arrays never change storage)
        self._held = [(v, w) for v, w in zip(variables, self.weights) if v is not w]
        self.dtype = np.dtype(dtype)
        self.shapes = [tuple(w.shape) for w in self.weights]
        self.sizes = np.array([int(np.prod(shape)) for shape in self.shapes], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.decay_mask = tuple(decay_mask)
        self.decay = np.array(decay_mask, np.uint8)
        self._reader = kernels.AddressReader([len(shape) for shape in self.shapes])
        self.weight_addresses = self.addresses(self.weights)
        self.weight_list = self.weight_addresses.tolist()
        #: one flat buffer per role (``state_roles``), each Variable a view into it
        self.buffers = {role: self._pack(group) for role, group in per_weight if role != MASTER}
        chunks = [(t, start, min(start + CHUNK, size))
                  for t, size in enumerate(self.sizes) for start in range(0, max(int(size), 1), CHUNK)]
        self.chunk_tensor, self.chunk_start, self.chunk_stop = (np.array(c, np.int64) for c in zip(*chunks))
        self._chunk_sums = np.zeros(len(chunks), np.float64)
        self._size = int(self.sizes.sum())
        self._no_denominators = np.ones(len(self.weights), self.dtype)
        self._like = np.zeros(0, self.dtype)

    @property
    def parallel(self) -> bool:
        """Whether the kernels run threads (see ``_runs_threads``)."""
        return _runs_threads(self._size)

    def _pack(self, variables):
        """One flat buffer holding every variable's value; each variable rebinds to its view."""
        flat = np.empty(int(self.sizes.sum()), self.dtype)
        for variable, offset, size, shape in zip(variables, self.offsets, self.sizes, self.shapes):
            view = flat[offset:offset + size].reshape(shape)
            variable._rebind(self.memory.wrap(view))
        return flat

    def still_bound(self) -> bool:
        """Whether every Variable among the weights still holds the array the kernel writes, and
        every weight still has the storage whose address the kernel holds (a tensor's ``.data``
        can be replaced, e.g. by ``module.half()``)."""
        return all(v._value is w for v, w in self._held) and not self.memory.moved(self)

    def addresses(self, values):
        """The arrays' addresses, or None unless every one is a C-contiguous array of the
        weights' kind and dtype and of its weight's shape."""
        return self.memory.addresses(self, values)

    def _common(self, grad_addresses):
        return (self.chunk_tensor, self.chunk_start, self.chunk_stop, grad_addresses, self.sizes, self.offsets,
                self._like)

    def sum_squares(self, grad_addresses, call):
        """Per tensor, the float64 sum of squares of the gradient after ``call``'s gradient statements."""
        kernel = cpu_codegen.load_sum_squares(self.parallel, call)
        kernel(*self._common(grad_addresses), self._chunk_sums, *(self.buffers[r] for r in call.roles),
               *call.scalars.values())
        return np.bincount(self.chunk_tensor, weights=self._chunk_sums, minlength=len(self.weights))

    def update_arguments(self, grad_addresses, call):
        """The update kernel's arguments; every scalar is a scalar of the weights' dtype."""
        return (self.chunk_tensor, self.chunk_start, self.chunk_stop, self.weight_addresses, grad_addresses,
                self.sizes, self.offsets, self._like, self.decay,
                self._no_denominators if call.denominators is None else call.denominators,
                *(self.buffers[r] for r in call.roles), *call.scalars.values())

    def run(self, grad_addresses, call, key):
        """One fused step; ``key``: the kernel's ``cpu_codegen.update_key``."""
        arguments = self.update_arguments(grad_addresses, call)
        cpu_codegen.update_kernel(self.parallel, call, key, self.dtype, arguments)(*arguments)


def _prepared(optimizer, plan, bound=False):
    """The optimizer's FusedState for its built weights (made now if needed), or None when
    this tier cannot take them; ``bound``: ``still_bound`` was checked in this ``apply``."""
    state = optimizer._tier_cache
    decay_mask = tuple(plan.decay_mask) if plan.weight_decay is not None else (False,) * len(plan.decay_mask)
    if isinstance(state, FusedState) and (bound or state.still_bound()) and state.decay_mask == decay_mask:
        return state
    memory = memory_for(optimizer._backend)
    weights = [params_mod.value_of(v) for v in optimizer._trainable_variables]
    if memory is None or not weights or not available():
        return None
    dtype = memory.dtype_of(weights)
    if dtype is None:
        return None
    roles = optimizer.state_roles
    state = FusedState(memory, dtype, optimizer._trainable_variables, weights, roles.per_weight, decay_mask)
    optimizer._tier_cache = state
    return state


def _in_background(plan) -> bool:
    """Whether this plan's kernels compile in the background (``polyak.tiers.background``):
    only where the fused and reference steps are bit-identical, i.e. no norm to sum, so that
    the step at which the fused tier takes over changes no number."""
    return not (plan.clipnorm or plan.global_clipnorm or plan.skip_nonfinite) and background.enabled()


def _numba_ready(optimizer, plan) -> bool:
    """Before this tier first prepares for the weights: whether numba is loaded, and for NumPy
    the address reader compiled for the weights' dtype and dimensionalities; if not, that is
    queued for the background, unless this step's kernel is in the disk cache. True when it
    is done in the foreground (by ``_prepared``)."""
    memory = memory_for(optimizer._backend)
    if memory is None or not _in_background(plan):
        return True
    weights = [params_mod.value_of(v) for v in optimizer._trainable_variables]
    dtype = memory.dtype_of(weights) if weights else None
    if dtype is None:
        return True
    ndims = tuple(sorted({w.ndim for w in weights})) if memory is NumpyMemory else ()
    key = ("numba", memory.__name__, dtype.str, ndims)
    if background.COMPILER.done(key) or _kernel_on_disk(optimizer, plan, weights, dtype):
        return True
    for name in _FORK_HOOKED:
        importlib.import_module(name)
    return background.COMPILER.ready(key, functools.partial(_load_numba, dtype, ndims))


#: what numba's import brings that pairs ``os.register_at_fork`` hooks (``before`` with
#: ``after``): imported here, in the foreground, since a fork that waits for numba's import in
#: the background would run the ``after`` hooks registered meanwhile without their ``before``
_FORK_HOOKED = ("logging", "concurrent.futures.thread")


def _kernel_on_disk(optimizer, plan, weights, dtype) -> bool:
    """Whether the update kernel of this step is compiled in the disk cache (read without numba)."""
    parallel = _runs_threads(sum(int(np.prod(w.shape)) for w in weights))
    call = host_call(optimizer, dtype, None)
    with np.errstate(all="ignore"):
        stages.kernel_call(plan, call)
    return cpu_codegen.update_on_disk(parallel, call, dtype)


def _runs_threads(size) -> bool:
    """Whether the kernels for weights of ``size`` elements in all run threads: from
    ``PARALLEL_FROM`` elements, where the process may (``kernels.threads_usable``: not in a child
    forked after numba's OpenMP threads started; numba need not be loaded yet)."""
    return size >= PARALLEL_FROM and (kernels is None or kernels.threads_usable())


def _load_numba(dtype, ndims):
    if available():
        kernels.AddressReader.compile_for(dtype, ndims)


def exact_gradients(optimizer, variables, grads):
    """The gradients' addresses when this tier is prepared for exactly these weights and every
    gradient is an array of exactly its weight's kind, dtype, shape and layout; else None."""
    state = optimizer._tier_cache
    built = optimizer._trainable_variables
    if not isinstance(state, FusedState) or not params_mod.are_the_built(variables, built) or not state.still_bound():
        return None
    return state.addresses(grads)


def can_take(optimizer, plan, variables, grads, proof=None) -> bool:
    """Whether this tier can run the (validated) step (then it is prepared for it);
    ``proof``: the gradients' addresses, when ``exact_gradients`` has read them."""
    if not params_mod.are_the_built(variables, optimizer._trainable_variables) or not stages.fusable(plan):
        return False
    if not isinstance(optimizer._tier_cache, FusedState) and not _numba_ready(optimizer, plan):
        return False
    state = _prepared(optimizer, plan, bound=proof is not None)  # a proof was read from a bound state
    return state is not None and (proof is not None or state.addresses(grads) is not None)


class CpuFusedTier:
    name = "cpu_fused"

    def run(self, optimizer, plan, indices, grads, proof=None) -> str:
        return self.run_guarded(optimizer, plan, indices, grads, proof)[0]

    def run_guarded(self, optimizer, plan, indices, grads, proof=None):
        """One step through the kernel, and whether it ran: ``(name, finite)``, ``finite`` False
        when a guarded plan's flag (read on the host, see ``guards``) skips it; ``proof``: the
        gradients' addresses, when already read.
        While the kernel compiles in the background, the reference tier takes the step."""
        state = _prepared(optimizer, plan, bound=True)  # ``can_take`` prepared it in this ``apply``
        addresses = proof if proof is not None else state.addresses(grads)
        call = host_call(optimizer, state.dtype, lambda c: state.sum_squares(addresses, c))
        with np.errstate(all="ignore"):
            stages.kernel_call(plan, call)
            if not nonfinite.flag(plan, np, call.checked):
                return self.name, False
        parallel = state.parallel
        key = cpu_codegen.update_key(parallel, call)
        if (_in_background(plan) and not cpu_codegen.compiled(key, state.dtype)
                and not cpu_codegen.update_on_disk(parallel, call, state.dtype)):
            job = cpu_codegen.update_compiler(parallel, call, key, state.dtype, state.update_arguments(addresses, call))
            if not background.COMPILER.ready((key, state.dtype.str), job):
                return reference.TIER.run(optimizer, plan, indices, grads), True
        with np.errstate(all="ignore"):
            state.run(addresses, call, key)
        optimizer._iterations.advance()
        return self.name, True


TIER = CpuFusedTier()
