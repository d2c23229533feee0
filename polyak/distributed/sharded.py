"""``ShardedOptimizer``: a polyak optimizer whose state is split across a ``torch.distributed`` group.

The first stage of ZeRO (Rajbhandari et al., 2020). With W ranks and P parameter elements, each
rank owns one contiguous slice of ``ceil(P / W)`` elements of the flattened parameters (see
:mod:`polyak.distributed.layout`) and keeps the optimizer state (momentum, EMA averages,
gradient accumulators) for that slice only. One step on every rank:

1. the flat gradients are reduce-scattered and divided by W: each rank gets the mean gradient
   ``g = (1/W) sum_r g_r`` on its slice;
2. the rank runs the wrapped optimizer's full step (loss scale, accumulation, clipping, weight
   decay, momentum, EMA, skip_nonfinite) on its slice, cut into per-tensor pieces;
3. the updated slices are all-gathered into every rank's parameters.

Everything in the step is elementwise except two things, which are made global here:
``global_clipnorm`` scales by ``c * min(1/N, 1/c)`` with ``N^2 = sum_r ||g_slice_r||^2``
(one all-reduce of a scalar) and ``clipnorm`` by ``c / max(||g_t||, c)`` with each tensor's
squared norm summed over its pieces on all ranks (one all-reduce of a vector with an entry per
tensor). Both enter the clipping stage through the step plan's ``squares`` (``_RankSquares``),
after accumulation, where Keras clips. With ``skip_nonfinite`` the ranks agree on
whether any gradient anywhere is non-finite before stepping, so they skip together.

Weight-decay exclusions given by ``var_list`` carry over to the pieces of those tensors.
Checkpoints (:meth:`save` / :meth:`load`) hold the unsharded state in the wrapped optimizer's
own format, so they load on any number of ranks, or into a plain optimizer on one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import polyak
from polyak.distributed.layout import FlatLayout
from polyak.optimizers.base import Optimizer


class ShardedOptimizer:
    """Shard ``optimizer``'s state over ``process_group`` (default: the world).

    ``optimizer`` is an unbuilt polyak optimizer that only serves as the configuration; build
    with the model's parameters (torch tensors of one dtype, the same list on every rank), then
    call :meth:`apply` with each rank's local gradients. ``master_weights`` is not supported.

    Example (on every rank, after ``torch.distributed.init_process_group``)::

        opt = ShardedOptimizer(polyak.SGD(0.1, momentum=0.9, global_clipnorm=1.0))
        opt.build(list(model.parameters()))
        loss.backward()
        opt.apply([p.grad for p in model.parameters()])
    """

    def __init__(self, optimizer, process_group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "`ShardedOptimizer` needs an initialised process group: call "
                f"`torch.distributed.init_process_group` first. Received: process_group={process_group!r}"
            )
        if not isinstance(optimizer, Optimizer) or optimizer.built:
            raise ValueError(
                f"`optimizer` must be an unbuilt polyak optimizer. Received: optimizer={optimizer!r}"
            )
        if optimizer.master_weights:
            raise ValueError("`ShardedOptimizer` does not support master weights. Received: master_weights=True")
        if optimizer._exclude_pattern is not None:
            raise ValueError(
                "`ShardedOptimizer` maps weight-decay exclusions given by `var_list` only (torch tensors have "
                f"no names). Received: var_names pattern {optimizer._exclude_pattern.pattern!r}"
            )
        self.optimizer = optimizer
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.built = False

    # --- building -----------------------------------------------------------------
    def build(self, params):
        """Split the state of ``params`` (torch tensors) over the ranks and build this rank's slice."""
        params = list(params)
        if not params or not all(isinstance(p, torch.Tensor) for p in params):
            raise ValueError(f"`params` must be a non-empty list of torch tensors. Received: params={params!r}")
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(f"`params` must share one dtype. Received: dtypes {sorted(map(str, dtypes))}")
        layout = FlatLayout.of([tuple(p.shape) for p in params], self.world_size)
        self._check_same_everywhere(layout.checksum([str(p.dtype) for p in params]))
        pieces = layout.pieces(self.rank)
        if not pieces:
            raise ValueError(
                f"Rank {self.rank} owns no parameter elements: {layout.offsets[-1]} elements cannot be split over "
                f"{self.world_size} ranks."
            )
        self.params, self.layout, self.pieces = params, layout, pieces
        lo = self.rank * layout.shard_size
        self._slice = self._flat([p.detach() for p in params])[lo:lo + layout.shard_size].clone()
        self._views = [self._slice[pc.local:pc.local + pc.stop - pc.start] for pc in pieces]

        self.shard = type(self.optimizer).from_config(self.optimizer.get_config())
        self.shard._norm_squares = _RankSquares(self.pieces, len(params), process_group=self.process_group)
        excluded = self.optimizer._exclude_ids
        self.shard.exclude_from_weight_decay(
            var_list=[v for v, pc in zip(self._views, pieces) if id(params[pc.tensor]) in excluded])
        self.shard.build(self._views)
        self.built = True

    def _check_same_everywhere(self, checksum):
        values = torch.tensor([checksum, -checksum], dtype=torch.int64)
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.process_group)
        if values[0] != checksum or -values[1] != checksum:
            raise ValueError(
                "The ranks were given different parameter lists (names, shapes or dtypes differ): every rank "
                f"must build on the same list. Received on rank {self.rank}: checksum {checksum}"
            )

    def _flat(self, tensors):
        flat = torch.cat([t.reshape(-1) for t in tensors])
        return torch.nn.functional.pad(flat, (0, self.layout.padded_size - flat.numel()))

    # --- the step ---------------------------------------------------------------------
    def apply(self, grads):
        """One step from this rank's gradients (aligned with the built parameters); every rank calls it."""
        if not self.built:
            raise ValueError("Call `build(params)` before `apply`.")
        grads = list(grads)
        shapes = [None if g is None else tuple(g.shape) for g in grads]
        if shapes != list(self.layout.shapes):
            raise ValueError(
                f"`grads` must match the built parameters' shapes {list(self.layout.shapes)}. Received: {shapes}"
            )
        g_slice = self._reduce_scatter(self._flat(grads)) / self.world_size
        if self.shard.skip_nonfinite:
            bad = (~torch.isfinite(g_slice).all()).to(torch.float32).reshape(1)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=self.process_group)
            if bad[0]:
                g_slice = torch.full_like(g_slice, float("nan"))
        self.shard.apply([g_slice[pc.local:pc.local + pc.stop - pc.start] for pc in self.pieces], self._views)
        full = self._all_gather(self._slice)
        with torch.no_grad():
            for p, a, b in zip(self.params, self.layout.offsets, self.layout.offsets[1:]):
                p.copy_(full[a:b].view_as(p))

    def _reduce_scatter(self, flat):
        out = torch.empty(self.layout.shard_size, dtype=flat.dtype)
        reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        reduce_scatter(out, flat, group=self.process_group)
        return out

    def _all_gather(self, local):
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local, group=self.process_group)
        return torch.cat(parts)

    # --- state ---------------------------------------------------------------------------
    @property
    def iterations(self):
        return self.shard.iterations

    def state_bytes(self):
        """Bytes of this rank's per-element optimizer state (the counters and rate excluded)."""
        return sum(v.value.numel() * v.value.element_size() for v in self.shard.variables if v.value.ndim > 0)

    @staticmethod
    def _kinds(opt):
        return [group for _, group in opt.state_roles.per_weight]

    @staticmethod
    def _scalars(opt):
        return [v for _, v in opt.state_roles.scalars()]

    def unsharded(self):
        """A plain optimizer built on the parameters and holding the whole state (gathered; every rank calls it)."""
        full = type(self.optimizer).from_config(self.optimizer.get_config())
        full.exclude_from_weight_decay(var_list=[p for p in self.params if id(p) in self.optimizer._exclude_ids])
        full.build(self.params)
        for mine, whole in zip(self._kinds(self.shard), self._kinds(full)):
            local = torch.zeros_like(self._slice)
            for var, pc in zip(mine, self.pieces):
                local[pc.local:pc.local + pc.stop - pc.start] = var.value
            gathered = self._all_gather(local)
            for var, a, b in zip(whole, self.layout.offsets, self.layout.offsets[1:]):
                var.assign(gathered[a:b].reshape(var.shape))
        for mine, whole in zip(self._scalars(self.shard), self._scalars(full)):
            if mine is not None:
                whole.assign(mine.value)
        return full

    def save(self, path):
        """Write the unsharded state with :func:`polyak.save` (rank 0 writes; every rank calls it)."""
        full = self.unsharded()
        if self.rank == 0:
            polyak.save(path, full)
        dist.barrier(group=self.process_group)

    def load(self, path):
        """Restore a checkpoint of the unsharded state (written by any number of ranks, or by one)."""
        full = type(self.optimizer).from_config(self.optimizer.get_config())
        full.build(self.params)
        polyak.load(path, full)
        for mine, whole in zip(self._kinds(self.shard), self._kinds(full)):
            for var, pc in zip(mine, self.pieces):
                var.assign(whole[pc.tensor].value.reshape(-1)[pc.start:pc.stop])
        for mine, whole in zip(self._scalars(self.shard), self._scalars(full)):
            if mine is not None:
                mine.assign(whole.value)


class _RankSquares:
    """Norms for clipping over the whole tensors: this rank's pieces' sums of squares are
    added over the ranks (one all-reduce of a vector with an entry per tensor, or of a scalar)."""

    def __init__(self, pieces, n_tensors, process_group):
        self.pieces, self.n_tensors, self.process_group = pieces, n_tensors, process_group

    def per_tensor(self, xp, squares):
        totals = torch.zeros(self.n_tensors, dtype=squares[0].dtype)
        for s, pc in zip(squares, self.pieces):
            totals[pc.tensor] += s.reshape(())
        dist.all_reduce(totals, group=self.process_group)
        return [totals[pc.tensor].reshape(s.shape) for s, pc in zip(squares, self.pieces)]

    def total(self, xp, squares):
        total = torch.stack(squares).sum().reshape(1)
        dist.all_reduce(total, group=self.process_group)
        return total[0]
