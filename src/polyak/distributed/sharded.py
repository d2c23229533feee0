"""``ShardedOptimizer``: a polyak optimizer whose state is split across a ``torch.distributed`` group.

The first stage of ZeRO (Rajbhandari et al., 2020). The parameters are grouped by dtype; within
each dtype group of P elements, each of the W ranks owns one contiguous slice of
``ceil(P / W)`` elements of the flattened parameters (see :mod:`polyak.distributed.layout`) and
keeps the optimizer state (momentum, EMA averages, gradient accumulators, float32 master copies)
for that slice only. One step on every rank:

1. per dtype group, the flat gradients are reduce-scattered (bucket by bucket, see
   :mod:`polyak.distributed.buckets`; with ``overlap=True`` during the backward pass) and
   divided by W: each rank gets the mean gradient ``g = (1/W) sum_r g_r`` on its slice;
2. the rank runs the wrapped optimizer's full step (master weights, ``overwrite_with_gradient``,
   loss scale, accumulation, clipping, weight decay, momentum, EMA, skip_nonfinite) on its
   slices, cut into per-tensor pieces;
3. the updated slices are all-gathered into every rank's parameters;
4. constraints run on whole tensors, on every rank (see below).

Everything in the step is elementwise except clipping and constraints, which are made global
here. ``global_clipnorm`` scales by ``c * min(1/N, 1/c)`` with ``N^2 = sum_r ||g_slice_r||^2``
(one all-reduce of a scalar) and ``clipnorm`` by ``c / max(||g_t||, c)`` with each tensor's
squared norm summed over its pieces on all ranks (one all-reduce of a vector with an entry per
tensor). Both enter the clipping stage through the step plan's ``squares`` (``rank_squares.RankSquares``),
after accumulation, where Keras clips. With ``skip_nonfinite`` the ranks agree on the guard's
flag (``RankSquares.agree``: false when any value the step computes on any rank is non-finite,
see :mod:`polyak.core.nonfinite`), so they skip together.

A constraint (``param.constraint = fn``, read on every step, as on one process) sees the whole
tensor: after the all-gather every rank applies it to the full parameter — to the full float32
master when the parameter has one, which takes one all-reduce of those masters — and writes its
own piece back into its slice. As in Keras, it runs after the EMA update and not on a skipped
step. A parameter flagged ``overwrite_with_gradient`` (read at ``build``) takes the reduced
(mean) gradient as its value; that is elementwise and runs inside the slices.

Weight-decay exclusions apply per tensor: by ``var_list`` (the tensors) or ``var_names``
(searched in the names given to :meth:`build`, e.g. by ``model.named_parameters()``).

Checkpoints: :meth:`save` / :meth:`load` hold the unsharded state in the wrapped optimizer's own
format (gathered; rank 0 writes); :meth:`save_sharded` / :meth:`load_sharded` write one file per
rank and no rank gathers anything (see :mod:`polyak.distributed.shard_files`). Both load on any
number of ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import polyak
from polyak.distributed import buckets, failures
from polyak.distributed import layout as layout_mod
from polyak.distributed import shard_files
from polyak.distributed.rank_squares import RankSquares
from polyak.optimizers.base import Optimizer
from polyak.optimizers.state_roles import MASTER
from polyak.optimizers.structure import NamedWeights

_SIXTEEN_BIT = (torch.float16, torch.bfloat16)


class ShardedOptimizer:
    """Shard ``optimizer``'s state over ``process_group`` (default: the world).

    ``optimizer`` is an unbuilt polyak optimizer that only serves as the configuration; build
    with the model's parameters (the same list on every rank; torch tensors, or ``(name,
    tensor)`` pairs such as ``model.named_parameters()``), then call :meth:`apply` with each
    rank's local gradients.

    ``overlap=True`` reduce-scatters each bucket of about ``bucket_mb`` MiB of gradients as soon
    as the backward pass has produced it (hooks on the parameters, as DDP does); ``apply()`` then
    takes no gradients and waits for the buckets. The numbers equal those without overlap bit for
    bit (the same bucketed collectives run either way). One backward pass per ``apply()``.

    Example (on every rank, after ``torch.distributed.init_process_group``)::

        opt = ShardedOptimizer(polyak.SGD(0.1, momentum=0.9, global_clipnorm=1.0))
        opt.build(model.named_parameters())
        loss.backward()
        opt.apply([p.grad for p in model.parameters()])

    or, overlapped::

        opt = ShardedOptimizer(polyak.SGD(0.1, momentum=0.9), overlap=True)
        opt.build(model.named_parameters())
        loss.backward()  # buckets are reduce-scattered as their gradients arrive
        opt.apply()
    """

    def __init__(self, optimizer, process_group=None, overlap=False, bucket_mb=1.0):
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "`ShardedOptimizer` needs an initialised process group: call "
                f"`torch.distributed.init_process_group` first. Received: process_group={process_group!r}"
            )
        if not isinstance(optimizer, Optimizer) or optimizer.built:
            raise ValueError(
                f"`optimizer` must be an unbuilt polyak optimizer. Received: optimizer={optimizer!r}"
            )
        if not isinstance(overlap, bool):
            raise ValueError(f"`overlap` must be True or False. Received: overlap={overlap!r}")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or not bucket_mb > 0:
            raise ValueError(f"`bucket_mb` must be a number greater than 0. Received: bucket_mb={bucket_mb!r}")
        self.optimizer = optimizer
        self.overlap, self.bucket_mb = overlap, bucket_mb
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.built = False

    # --- building -----------------------------------------------------------------
    def build(self, params):
        """Split the state of ``params`` over the ranks and build this rank's slices.

        ``params``: torch tensors, or ``(name, tensor)`` pairs (``model.named_parameters()``);
        unnamed tensors are called ``variable_{index}``, as on one process.
        """
        params, names = _named(params)
        groups = layout_mod.dtype_groups(params, self.world_size)
        self._check_same_everywhere(_digest(names, params))
        parts = layout_mod.parts(groups, self.rank)
        if not parts:
            raise ValueError(
                f"Rank {self.rank} owns no parameter elements: {sum(p.numel() for p in params)} elements cannot "
                f"be split over {self.world_size} ranks."
            )
        overwrite = tuple(bool(getattr(p, "overwrite_with_gradient", False)) for p in params)
        self._check_clipping_everywhere(groups, overwrite)
        self.params, self.names, self.groups, self.parts, self.overwrite = params, names, groups, parts, overwrite
        self.decays = tuple(self._decays(p, name) for p, name in zip(params, names))
        self._slices = [self._flat(g, [p.detach() for p in params])[self._own(g)].clone()
                        for g in range(len(groups))]
        self._views = [self._slices[pt.group][pt.local:pt.local + pt.size] for pt in parts]
        for view, pt in zip(self._views, parts):
            view.overwrite_with_gradient = overwrite[pt.tensor]

        self.shard = type(self.optimizer).from_config(self.optimizer.get_config())
        self.shard._norm_squares = RankSquares([pt for pt in parts if not overwrite[pt.tensor]], len(params),
                                                process_group=self.process_group)
        self.shard.exclude_from_weight_decay(
            var_list=[v for v, pt in zip(self._views, parts) if not self.decays[pt.tensor]])
        self.shard.build(self._views)
        self._gradients = buckets.BucketedReduceScatter(groups, self.rank, self.world_size, self.process_group,
                                                        int(self.bucket_mb * 2**20))
        if self.overlap:
            self._gradients.attach(params, names)
        self.built = True

    def _decays(self, param, name):
        """Whether the configuration optimizer's exclusions leave ``param`` (called ``name``) decaying."""
        pattern = self.optimizer._exclude_pattern
        return id(param) not in self.optimizer._exclude_ids and (pattern is None or pattern.search(name) is None)

    def _check_same_everywhere(self, checksum):
        values = torch.tensor([checksum, -checksum], dtype=torch.int64)
        with failures.peers("ShardedOptimizer.build (comparing the parameter lists)", self.process_group):
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.process_group)
        if values[0] != checksum or -values[1] != checksum:
            raise ValueError(
                "The ranks were given different parameter lists (names, shapes or dtypes differ): every rank "
                f"must build on the same list. Received on rank {self.rank}: checksum {checksum}"
            )

    def _check_clipping_everywhere(self, groups, overwrite):
        """Norms for clipping are all-reduced inside the step, which runs only on ranks with a
        descending piece: every rank must have one (decided alike on every rank)."""
        if not (self.optimizer.clipnorm or self.optimizer.global_clipnorm):
            return
        for rank in range(self.world_size):
            if all(overwrite[pt.tensor] for pt in layout_mod.parts(groups, rank)):
                raise ValueError(
                    f"With clipping, every rank must own elements of a parameter that is not "
                    f"`overwrite_with_gradient`; rank {rank} does not. Received: world_size={self.world_size}"
                )

    def _own(self, g):
        size = self.groups[g].layout.shard_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def _flat(self, g, tensors):
        """Dtype group ``g``'s tensors among ``tensors`` (aligned with the parameters), flat and padded."""
        group = self.groups[g]
        flat = torch.cat([tensors[i].reshape(-1).to(group.dtype) for i in group.tensors])
        return torch.nn.functional.pad(flat, (0, group.layout.padded_size - flat.numel()))

    # --- the step ---------------------------------------------------------------------
    def apply(self, grads=None):
        """One step from this rank's gradients (aligned with the built parameters); every rank calls it.

        With ``overlap=True`` the gradients were taken during the backward pass: call ``apply()``
        with no ``grads``."""
        if not self.built:
            raise ValueError("Call `build(params)` before `apply`.")
        g_slices = [s / self.world_size for s in self._reduced(grads)]
        counted = self.shard.skipped_steps
        before = None if counted is None else int(counted.numpy())
        self.shard.apply([g_slices[pt.group][pt.local:pt.local + pt.size] for pt in self.parts], self._views)
        skipped = counted is not None and int(counted.numpy()) != before  # the ranks agreed (``RankSquares``)
        for g, group in enumerate(self.groups):
            full = self._all_gather(self._slices[g], "ShardedOptimizer.apply (all-gather of the updated slices)")
            with torch.no_grad():
                for i, a, b in zip(group.tensors, group.layout.offsets, group.layout.offsets[1:]):
                    self.params[i].copy_(full[a:b].view_as(self.params[i]))
        if not skipped:
            self._constrain()

    def _reduced(self, grads):
        """This rank's slices of the gradients summed over the ranks, one per dtype group."""
        if self.overlap:
            if grads is not None:
                raise ValueError(
                    "With `overlap=True` the gradients are reduced during the backward pass: call `apply()` "
                    f"without `grads`. Received: grads of type {type(grads).__name__}"
                )
            with failures.peers("ShardedOptimizer.apply (reduce-scatter of the gradients)", self.process_group):
                return self._gradients.wait()
        if grads is None:
            raise ValueError("`grads` is required (it is optional only with `overlap=True`). Received: grads=None")
        grads = list(grads)
        shapes = [None if g is None else tuple(g.shape) for g in grads]
        expected = [tuple(p.shape) for p in self.params]
        if shapes != expected:
            raise ValueError(f"`grads` must match the built parameters' shapes {expected}. Received: {shapes}")
        with failures.peers("ShardedOptimizer.apply (reduce-scatter of the gradients)", self.process_group):
            return self._gradients.reduce_scatter(grads)

    def _has_master(self, i):
        return bool(self.optimizer.master_weights) and self.params[i].dtype in _SIXTEEN_BIT

    def _constrain(self):
        """Every constrained parameter becomes ``constraint(whole tensor)`` on every rank, its
        master first when it has one; each rank writes its pieces back into its slices."""
        todo = [i for i, p in enumerate(self.params)
                if getattr(p, "constraint", None) is not None and not self.overwrite[i]]
        if not todo:
            return
        masters = self._masters()
        with torch.no_grad():
            for i, whole in zip(todo, masters):
                constraint, param = self.params[i].constraint, self.params[i]
                if whole is None:
                    param.copy_(torch.as_tensor(constraint(param.detach())).to(param.dtype))
                    continue
                new = torch.as_tensor(constraint(whole)).to(torch.float32).reshape(-1)
                for var, pt in zip(self.shard.state_roles.role(MASTER), self.parts):
                    if pt.tensor == i:
                        var.assign(new[pt.start:pt.stop].clone())
                param.copy_(new.view_as(param).to(param.dtype))
            for view, pt in zip(self._views, self.parts):
                if pt.tensor in todo:
                    view.copy_(self.params[pt.tensor].detach().reshape(-1)[pt.start:pt.stop])

    def _masters(self):
        """For each constrained parameter, its whole float32 master (one all-reduce of this
        rank's master pieces, zeros elsewhere), or None when it has none."""
        todo = [i for i, p in enumerate(self.params)
                if getattr(p, "constraint", None) is not None and not self.overwrite[i]]
        mastered = [i for i in todo if self._has_master(i)]
        if not mastered:
            return [None] * len(todo)
        starts, total = {}, 0
        for i in mastered:
            starts[i], total = total, total + self.params[i].numel()
        buffer = torch.zeros(total, dtype=torch.float32)
        for var, pt in zip(self.shard.state_roles.role(MASTER), self.parts):
            if pt.tensor in starts:
                buffer[starts[pt.tensor] + pt.start:starts[pt.tensor] + pt.stop] = var.value
        with failures.peers("ShardedOptimizer.apply (all-reduce of the constrained masters)", self.process_group):
            dist.all_reduce(buffer, group=self.process_group)
        return [buffer[starts[i]:starts[i] + self.params[i].numel()].view(self.params[i].shape)
                if i in starts else None for i in todo]

    def _all_gather(self, local, operation):
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        with failures.peers(operation, self.process_group):
            dist.all_gather(parts, local, group=self.process_group)
        return torch.cat(parts)

    # --- state ---------------------------------------------------------------------------
    @property
    def iterations(self):
        return self.shard.iterations

    def state_bytes(self):
        """Bytes of this rank's per-element optimizer state (the counters and rate excluded)."""
        return sum(v.value.numel() * v.value.element_size() for v in self.shard.variables if v.value.ndim > 0)

    def plain_optimizer(self):
        """An unsharded optimizer of the same configuration built on the parameters, with their
        names and the same decay exclusions (what :meth:`unsharded` fills and :meth:`load` reads)."""
        full = type(self.optimizer).from_config(self.optimizer.get_config())
        full.exclude_from_weight_decay(var_list=[p for p, decays in zip(self.params, self.decays) if not decays])
        full.build(NamedWeights(self.params, self.names))
        return full

    def unsharded(self):
        """A plain optimizer holding the whole state (gathered role by role; every rank calls it)."""
        full = self.plain_optimizer()
        mine = dict(self.shard.state_roles.per_weight)
        for role, whole in full.state_roles.per_weight:
            for g, group in enumerate(self.groups):
                targets = [whole[i] for i in group.tensors]
                present = [t for t in targets if t is not None]
                if not present:
                    continue
                local = torch.zeros(group.layout.shard_size, dtype=present[0].value.dtype)
                for var, pt in zip(mine[role], self.parts):
                    if pt.group == g and var is not None:
                        local[pt.local:pt.local + pt.size] = var.value
                gathered = self._all_gather(local, "ShardedOptimizer.unsharded (all-gather of the state)")
                for var, a, b in zip(targets, group.layout.offsets, group.layout.offsets[1:]):
                    if var is not None:
                        var.assign(gathered[a:b].reshape(var.value.shape))
        _copy_scalars(self.shard, full)
        return full

    def save(self, path):
        """Write the unsharded state with :func:`polyak.save` (rank 0 writes; every rank calls it)."""
        full = self.unsharded()
        if self.rank == 0:
            polyak.save(path, full)
        with failures.peers("ShardedOptimizer.save (barrier after rank 0 wrote)", self.process_group):
            dist.barrier(group=self.process_group)

    def load(self, path):
        """Restore a checkpoint of the unsharded state (written by any number of ranks, or by one)."""
        full = self.plain_optimizer()
        polyak.load(path, full)
        whole = dict(full.state_roles.per_weight)
        for role, mine in self.shard.state_roles.per_weight:
            for var, pt in zip(mine, self.parts):
                if var is not None:
                    var.assign(whole[role][pt.tensor].value.reshape(-1)[pt.start:pt.stop])
        _copy_scalars(full, self.shard)

    def save_sharded(self, directory):
        """Write this rank's state to its own file in ``directory``, and rank 0 an index (every
        rank calls it; nothing is gathered). See :mod:`polyak.distributed.shard_files`."""
        shard_files.save(self, directory)

    def load_sharded(self, directory):
        """Restore a :meth:`save_sharded` checkpoint written by any number of ranks (every rank calls it)."""
        shard_files.load(self, directory)


def _copy_scalars(source, target):
    for (_, mine), (_, theirs) in zip(source.state_roles.scalars(), target.state_roles.scalars()):
        theirs.assign(mine.value)


def _named(params):
    """``(tensors, names)`` from tensors or ``(name, tensor)`` pairs, after checking them."""
    if isinstance(params, dict):
        params = list(params.items())
    items = list(params)
    pairs = bool(items) and all(isinstance(x, tuple) and len(x) == 2 for x in items)
    tensors = [x[1] for x in items] if pairs else items
    if not tensors or not all(isinstance(p, torch.Tensor) for p in tensors):
        raise ValueError(
            "`params` must be a non-empty list of torch tensors or of (name, tensor) pairs. "
            f"Received: items of types {sorted({type(x).__name__ for x in items})}" if items else "Received: params=[]"
        )
    names = [str(x[0]) for x in items] if pairs else [f"variable_{i}" for i in range(len(tensors))]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Every parameter needs its own name. Received: names used twice {repeated}")
    return tensors, names


def _digest(names, params):
    """A digest of names, shapes and dtypes: ranks compare it to catch different parameter lists."""
    return layout_mod.FlatLayout.of([tuple(p.shape) for p in params], 1).checksum(
        [f"{n}:{p.dtype}" for n, p in zip(names, params)])
