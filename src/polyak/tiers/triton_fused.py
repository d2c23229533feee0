"""The Triton tier: PyTorch tensors on a CUDA device, one generated Triton kernel launch per step.

Like ``cpu_fused``, the optimizer's per-weight state is moved at the first step into one
flat buffer per role (here a tensor on the weights' device; each ``Variable`` keeps a view
into it), weights and gradients are reached through tables of their addresses, and the
kernel is written from the stages' statements for each call (``triton_codegen``) with the
scalars the same stages decide. A step is one launch over chunks of ``BLOCK`` elements of
every tensor, and one more (a per-chunk sum of squares) when clipping by norm. Each tensor's
state starts at a multiple of ``triton_codegen.ALIGN`` elements in the flat buffers, so when
every weight's and gradient's address is a multiple of 16 bytes (as PyTorch allocates them) a
block wholly inside its tensor moves 16 bytes per load and store instruction. Nothing is
read back from the device: the call is filled as the foreach tier's (``calls.device_call``),
the stored rate and the norms stay tensors there, and the tables and the scalars known on the
host go over in asynchronous copies from pinned memory.

16-bit weights (float16, bfloat16) are stepped as the reference steps them (see
``triton_codegen``): without master weights in their dtype, each operation rounded to it;
with master weights (``master_weights=True``) through float32 masters, packed into one more
flat buffer, the gradient 16-bit until it meets float32, and the weights stored as the masters
rounded. Clipping by norm is declined when the gradient it clips is 16-bit (no masters, or
masters without accumulation): the reference sums its squares in 16 bits.

Takes a step when: Triton imports; every weight is a plain, contiguous float32, float64,
float16 or bfloat16 tensor (no subclass such as DTensor) of one dtype on one CUDA device,
with a master copy each or none; every stage can be fused for the plan, and the plan clips
no 16-bit gradient by norm; every weight is stepped and every gradient is a contiguous tensor
of its weight's dtype, shape and device. With ``TRITON_INTERPRET=1`` and ``POLYAK_TIER=triton``
(see :mod:`polyak.tiers`) it also takes CPU tensors, through Triton's interpreter: how the
tests run this kernel without a GPU. Not bfloat16 there: the interpreter holds it as uint16
and converts float32 to it by truncation, so the reference runs instead.

A guarded step (``skip_nonfinite``, a ``LossScaleOptimizer``: :mod:`polyak.tiers.guards`) adds
one pass for its flag (none when it clips by norm: the norms make the flag), which stays on the
device unless the plan decides on the count: the update kernel reads it and stores nothing when
what the guard looks at was not finite.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from polyak.backends.kinds import dtype_name
from polyak.core import nonfinite, stages
from polyak.optimizers import parameters as params_mod
from polyak.optimizers.state_roles import MASTER
from polyak.tiers import calls, triton_codegen

BLOCK = 1024  #: elements per program
NUM_WARPS = 4
#: how every kernel is compiled: no FP contraction, so each operation is rounded as in the reference
COMPILE_OPTIONS = {"num_warps": NUM_WARPS, "enable_fp_fusion": False}
_SIXTEEN_BIT = ("float16", "bfloat16")
_DTYPES = ("float32", "float64") + _SIXTEEN_BIT  #: the weights' dtypes the tier takes
_available = None


def available() -> bool:
    """Whether Triton imports (imported on first use, to keep ``import polyak`` fast)."""
    global _available
    if _available is None:
        try:
            import triton  # noqa: F401
        except ImportError:
            _available = False
        else:
            _available = True
    return _available


def interpreted() -> bool:
    """Whether Triton runs its kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _torch():
    import torch

    return torch


def _plain(tensor, dtype, device):
    torch = _torch()
    return (type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.dtype is dtype and tensor.device == device
            and tensor.layout == torch.strided and tensor.is_contiguous())


class TritonState:
    """What the tier keeps for one optimizer's built weights: flat state and tables, on the device."""

    def __init__(self, variables, weights, per_weight, decay_mask):
        torch = _torch()
        self.weights = list(weights)
        self._held = [(v, w) for v, w in zip(variables, self.weights) if v is not w]
        self.dtype, self.device = self.weights[0].dtype, self.weights[0].device
        self.device_index = self.weights[0].get_device()  #: -1 on the CPU (the interpreter)
        per_weight = [(role, group) for role, group in per_weight if not all(v is None for v in group)]
        self.types = triton_codegen.Types(dtype_name(self.dtype), masters=MASTER in dict(per_weight))
        #: what the step computes in (float32 with masters), and the dtype of the scalars' array
        self.compute_dtype = getattr(torch, self.types.compute)
        self.scalar_dtype = np.dtype(self.types.scalar)
        self.shapes = [tuple(w.shape) for w in self.weights]
        sizes = [w.numel() for w in self.weights]
        #: each tensor's state starts at a multiple of ``ALIGN`` elements, so the flat buffers'
        #: blocks are as aligned as the weights'
        spans = [-(-size // triton_codegen.ALIGN) * triton_codegen.ALIGN for size in sizes]
        offsets = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
        self._flat_size = int(sum(spans))
        self._weights_aligned = all(w.data_ptr() % 16 == 0 for w in self.weights)
        self._grads_aligned = False
        self.decay_mask = tuple(decay_mask)
        self.sizes, self.offsets = self.table(sizes), self.table(offsets)
        self.decay = self.table(np.array(decay_mask, np.int64))
        self._weight_list = [w.data_ptr() for w in self.weights]
        self.weight_table = self.table(self._weight_list)
        #: one flat buffer per role (``state_roles``, the masters included), each Variable a view into it
        self.buffers = {role: self._pack(group, sizes, offsets) for role, group in per_weight}
        chunks = [(t, start) for t, size in enumerate(sizes) for start in range(0, max(size, 1), BLOCK)]
        self.chunk_tensor, self.chunk_start = (self.table(c) for c in zip(*chunks))
        self.grid = (len(chunks),)
        self._no_denominators = torch.ones(len(self.weights), dtype=getattr(torch, self.types.scalar),
                                           device=self.device)
        self._chunk_sums = torch.zeros(len(chunks), dtype=torch.float64, device=self.device)
        self._grad_addresses, self._grad_table = None, None

    def table(self, values):
        """An int64 table on the device."""
        return self.to_device(np.asarray(values, np.int64))

    def to_device(self, array):
        """A NumPy array copied to the weights' device without waiting for it: through pinned
        memory, asynchronously, on CUDA (a copy from pageable memory synchronises)."""
        tensor = _torch().from_numpy(array)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def grad_table(self, addresses):
        """The gradients' address table on the device, made again only when an address moved."""
        addresses = tuple(addresses)
        if addresses != self._grad_addresses:
            self._grad_table, self._grad_addresses = self.table(addresses), addresses
            self._grads_aligned = not any(address % 16 for address in addresses)
        return self._grad_table

    def kernel_types(self):
        """The kernel's static facts for the gradients of this step (aligned or not)."""
        return self.types._replace(aligned=self._weights_aligned and self._grads_aligned)

    def _pack(self, variables, sizes, offsets):
        torch = _torch()
        flat = torch.zeros(self._flat_size, dtype=variables[0].value.dtype, device=self.device)
        for variable, offset, size, shape in zip(variables, offsets, sizes, self.shapes):
            variable._rebind(flat[offset:offset + size].view(shape))
        return flat

    def still_bound(self) -> bool:
        """Whether every Variable among the weights still holds the tensor the kernel writes,
        and every weight still has the storage it had (``p.data = ...`` replaces it)."""
        return all(v._value is w for v, w in self._held) and [w.data_ptr() for w in self.weights] == self._weight_list

    def addresses(self, grads):
        """The gradients' addresses, or None unless each is a plain contiguous tensor of its
        weight's dtype, shape and device (one pass: this is most of a step's host time)."""
        if len(grads) != len(self.shapes):
            return None
        torch = _torch()
        plain, dtype, index, strided = (torch.Tensor, torch.nn.Parameter), self.dtype, self.device_index, torch.strided
        found = []
        for g, shape in zip(grads, self.shapes):
            if not (type(g) in plain and g.dtype is dtype and g.shape == shape and g.layout is strided
                    and g.is_contiguous() and g.get_device() == index):
                return None
            found.append(g.data_ptr())
        return found

    def _scalars(self, call):
        """The call's scalars as one array on the device: those known on the host copied in one
        asynchronous transfer, those already on the device (the stored rate, a clipping factor)
        copied into their places there."""
        torch = _torch()
        values = list(call.scalars.values()) or [0]
        on_device = [(k, v) for k, v in enumerate(values) if isinstance(v, torch.Tensor)]
        host = np.array([0 if isinstance(v, torch.Tensor) else v for v in values], self.scalar_dtype)
        scalars = self.to_device(host)
        for k, value in on_device:
            scalars[k].copy_(value)
        return scalars

    def _device(self):
        torch = _torch()
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def sum_squares(self, grad_table, call):
        """Per tensor, the float64 sum of squares of the gradient after ``call``'s gradient
        statements (summed per chunk, then per tensor: in another order than the reference),
        a tensor on the device."""
        torch = _torch()
        kernel = triton_codegen.load_sum_squares(call, interpreted(), self.kernel_types())
        with self._device():
            kernel[self.grid](self.chunk_tensor, self.chunk_start, grad_table, self.sizes, self.offsets,
                              self._chunk_sums, self._scalars(call), *(self.buffers[r] for r in call.roles),
                              BLOCK=BLOCK, **COMPILE_OPTIONS)
        totals = torch.zeros(len(self.weights), dtype=torch.float64, device=self.device)
        return totals.index_add_(0, self.chunk_tensor, self._chunk_sums)

    def run(self, grad_table, call, finite=None):
        """One fused step; every scalar is a scalar of the step's dtype. ``finite``: a boolean
        flag on the device that gates every store (a guarded step), or None."""
        types = self.kernel_types()._replace(guarded=finite is not None)
        kernel = triton_codegen.load_update(call, interpreted(), types)
        denominators = self._no_denominators if call.denominators is None else call.denominators
        with self._device():
            kernel[self.grid](self.chunk_tensor, self.chunk_start, self.weight_table, grad_table, self.sizes,
                              self.offsets, self.decay, denominators, self._scalars(call),
                              self._no_denominators if finite is None else finite,
                              *(self.buffers[r] for r in triton_codegen.kernel_roles(call.roles, self.types)),
                              BLOCK=BLOCK, **COMPILE_OPTIONS)


def takes(types, plan) -> bool:
    """Whether the kernel for weights of ``types`` steps ``plan`` as the reference does: not
    when it clips a 16-bit gradient by norm (the reference sums its squares in 16 bits; with
    master weights and accumulation the gradient it clips is the float32 mean), nor when it
    divides a 16-bit gradient by a ``LossScaleOptimizer``'s float32 scale (a tensor: whether the
    reference rounds it to 16 bits first differs between torch's CPU and CUDA kernels)."""
    sixteen_bit = types.weight in _SIXTEEN_BIT
    clips_16_bits = sixteen_bit and not (types.masters and plan.gradient_accumulation_steps)
    scales_16_bits = sixteen_bit and plan.loss_scale_factor is not None and not isinstance(
        plan.loss_scale_factor, (int, float))
    return not (clips_16_bits and (plan.clipnorm or plan.global_clipnorm)) and not scales_16_bits


def _device_ok(device, forced):
    return device.type == "cuda" or (forced and device.type == "cpu" and interpreted())


def _prepared(optimizer, plan, forced, bound=False):
    """The optimizer's TritonState for its built weights (made now if needed), or None;
    ``bound``: ``exact_gradients`` found it still bound in this ``apply``."""
    state = optimizer._tier_cache
    decay_mask = tuple(plan.decay_mask) if plan.weight_decay is not None else (False,) * len(plan.decay_mask)
    if isinstance(state, TritonState) and (bound or state.still_bound()) and state.decay_mask == decay_mask:
        return state
    if optimizer._backend.name != "torch" or not _device_ok(optimizer._backend.device, forced) or not available():
        return None
    weights = [params_mod.value_of(v) for v in optimizer._trainable_variables]
    if not weights or dtype_name(weights[0].dtype) not in _DTYPES or not all(
            _plain(w, weights[0].dtype, weights[0].device) for w in weights):
        return None
    if interpreted() and weights[0].dtype is _torch().bfloat16:
        return None  # the interpreter holds bfloat16 as uint16 and truncates float32 to it
    masters = [m for m in optimizer.state_roles.role(MASTER) if m is not None]
    if masters and len(masters) != len(weights):
        return None
    if not takes(triton_codegen.Types(dtype_name(weights[0].dtype), bool(masters)), plan):
        return None
    state = TritonState(optimizer._trainable_variables, weights, optimizer.state_roles.per_weight, decay_mask)
    optimizer._tier_cache = state
    return state


def exact_gradients(optimizer, variables, grads):
    """The gradients' addresses when this tier is prepared for exactly these weights and every
    gradient is a plain contiguous tensor of its weight's dtype, shape and device; else None."""
    state = optimizer._tier_cache
    built = optimizer._trainable_variables
    if not isinstance(state, TritonState) or not params_mod.are_the_built(variables, built) or not state.still_bound():
        return None
    return state.addresses(grads)


def can_take(optimizer, plan, variables, grads, forced=False, proof=None) -> bool:
    """Whether this tier can run the (validated) step (then it is prepared for it);
    ``forced``: asked for by ``POLYAK_TIER=triton``, which lets CPU tensors in under the
    interpreter; ``proof``: the gradients' addresses, when ``exact_gradients`` has read them."""
    if optimizer._backend.name != "torch" or not _device_ok(optimizer._backend.device, forced):
        return False
    if not params_mod.are_the_built(variables, optimizer._trainable_variables) or not available():
        return False
    if not stages.fusable(plan):
        return False
    state = _prepared(optimizer, plan, forced, bound=proof is not None)
    return state is not None and takes(state.types, plan) and (proof is not None or state.addresses(grads) is not None)


class TritonTier:
    name = "triton"

    def run(self, optimizer, plan, indices, grads, proof=None) -> str:
        return self.run_guarded(optimizer, plan, indices, grads, proof)[0]

    def run_guarded(self, optimizer, plan, indices, grads, proof=None):
        """One step, and whether it ran: ``(name, finite)``. A guarded plan's flag (see ``guards``)
        stays on the device and gates the kernel's stores there, unless the plan decides on the
        count, which the host must then know: then it is read back (a Python bool)."""
        state = optimizer._tier_cache
        grad_table = state.grad_table(proof if proof is not None else state.addresses(grads))
        call = calls.device_call(optimizer, plan, state.compute_dtype, lambda c: state.sum_squares(grad_table, c))
        with np.errstate(all="ignore"):
            stages.kernel_call(plan, call)
            finite = nonfinite.flag(plan, call.xp, call.checked)
            if finite is not True and calls.needs_count(optimizer, plan):
                finite = bool(finite)
            if finite is not False:
                state.run(grad_table, call, None if finite is True else finite)
        optimizer._iterations.advance(finite)
        return self.name, finite


TIER = TritonTier()
