"""The gradients' reduce-scatter, bucket by bucket, at the end of the backward pass or during it.

Each dtype group's flat gradient (see :mod:`polyak.distributed.layout`) is cut into buckets of
whole consecutive tensors, about ``bucket_bytes`` each, starting from the last tensor (the
backward pass produces the last layers' gradients first); the last bucket in flat order also
holds the padding. A bucket covers the flat range ``[start, stop)``; its reduce-scatter gives
rank ``r`` the sum over the ranks of ``[max(start, r S), min(stop, (r + 1) S))`` (possibly
empty), written straight into rank ``r``'s slice. Every element is summed exactly once, so the
slices are those of one reduce-scatter of the whole flat buffer.

The buckets are launched in one fixed order on every rank (collectives must match), each as one
asynchronous collective: on gloo an ``all_reduce`` of the bucket, of which each rank keeps its
part (gloo's reduce-scatter sends as many bytes as its all-reduce, measured with
``benchmarks/zero1_gloo.py``, and its list form with uneven parts took 2 to 3 times longer on 4
ranks); on other backends (NCCL) a ``reduce_scatter`` with uneven parts.

* without overlap, :meth:`BucketedReduceScatter.reduce_scatter` launches them all from the
  gradients given to ``apply`` and waits;
* with overlap, :meth:`BucketedReduceScatter.attach` registers a post-accumulate-grad hook on each
  parameter: the hook copies the new gradient into its bucket, and every bucket that is complete
  and next in order is launched while the backward pass goes on; :meth:`wait` then collects them.

Both run the same collectives on the same buffers, so their results are equal bit for bit, for
any number of ranks. (A bucketed reduction is not bit-equal to an unbucketed one on more than
two ranks: gloo's sum order per element depends on where it sits in the buffer.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist


class Bucket(NamedTuple):
    """Tensors ``tensors`` (positions in the built list, in flat order) of dtype group ``group``,
    at ``[start, stop)`` of its padded flat vector."""

    group: int
    tensors: tuple
    start: int
    stop: int


def plan(groups, bucket_bytes):
    """The buckets of every dtype group, in launch order: latest-produced (highest position) first."""
    buckets = []
    for g, group in enumerate(groups):
        offsets, itemsize = group.layout.offsets, torch.empty((), dtype=group.dtype).element_size()
        end, size = len(group.tensors), 0
        for k in reversed(range(len(group.tensors))):
            size += (offsets[k + 1] - offsets[k]) * itemsize
            if size >= bucket_bytes or k == 0:
                stop = group.layout.padded_size if end == len(group.tensors) else offsets[end]
                buckets.append(Bucket(g, group.tensors[k:end], offsets[k], stop))
                end, size = k, 0
    return sorted(buckets, key=lambda b: -b.tensors[-1])


class BucketedReduceScatter:
    """Reduce-scatter the gradients of ``groups`` into this rank's slices, bucket by bucket."""

    def __init__(self, groups, rank, world_size, process_group, bucket_bytes):
        self.groups, self.rank, self.world_size, self.process_group = groups, rank, world_size, process_group
        self.buckets = plan(groups, bucket_bytes)
        self.all_reduce = dist.get_backend(process_group) == "gloo"
        self._bucket_of = {i: b for b, bucket in enumerate(self.buckets) for i in bucket.tensors}
        self._hooks = []
        self._reset()

    def _reset(self):
        self._slices = [torch.empty(group.layout.shard_size, dtype=group.dtype) for group in self.groups]
        self._flats = [None] * len(self.buckets)
        self._arrived = [set() for _ in self.buckets]
        self._works = []

    # --- one bucket ----------------------------------------------------------------------
    def _offset(self, bucket, i):
        """Where tensor ``i`` starts in ``bucket``'s buffer, and its end."""
        group = self.groups[bucket.group]
        k = group.tensors.index(i)
        return group.layout.offsets[k] - bucket.start, group.layout.offsets[k + 1] - bucket.start

    def _put(self, b, i, grad):
        bucket = self.buckets[b]
        if self._flats[b] is None:
            self._flats[b] = torch.zeros(bucket.stop - bucket.start, dtype=self.groups[bucket.group].dtype)
        a, z = self._offset(bucket, i)
        with torch.no_grad():
            self._flats[b][a:z].copy_(grad.reshape(-1))
        self._arrived[b].add(i)

    def _mine(self, b):
        """This rank's part of bucket ``b``: where it sits in the bucket, and in the slice."""
        bucket = self.buckets[b]
        shard = self.groups[bucket.group].layout.shard_size
        sizes = [max(0, min(bucket.stop, (r + 1) * shard) - max(bucket.start, r * shard))
                 for r in range(self.world_size)]
        start = max(bucket.start, self.rank * shard)
        return sizes, slice(start - bucket.start, start - bucket.start + sizes[self.rank]), \
            slice(start - self.rank * shard, start - self.rank * shard + sizes[self.rank])

    def _launch(self, b):
        sizes, _, in_slice = self._mine(b)
        flat = self._flats[b]
        if self.all_reduce:
            work = dist.all_reduce(flat, group=self.process_group, async_op=True)
        else:
            out = self._slices[self.buckets[b].group][in_slice]
            work = dist.reduce_scatter(out if out.numel() else torch.empty(0, dtype=flat.dtype),
                                       list(flat.split(sizes)), group=self.process_group, async_op=True)
        self._works.append(work)

    def _launch_ready(self):
        while len(self._works) < len(self.buckets):
            b = len(self._works)
            if len(self._arrived[b]) < len(self.buckets[b].tensors):
                return
            self._launch(b)

    def _collect(self):
        for b, work in enumerate(self._works):
            work.wait()
            if self.all_reduce:
                _, in_bucket, in_slice = self._mine(b)
                self._slices[self.buckets[b].group][in_slice] = self._flats[b][in_bucket]
        slices = self._slices
        self._reset()
        return slices

    # --- without overlap -----------------------------------------------------------------
    def reduce_scatter(self, grads):
        """This rank's summed slices (one per dtype group) of ``grads`` (aligned with the parameters)."""
        for b, bucket in enumerate(self.buckets):
            for i in bucket.tensors:
                self._put(b, i, grads[i])
        self._launch_ready()
        return self._collect()

    # --- with overlap --------------------------------------------------------------------
    def attach(self, params, names):
        """Start each bucket's reduce-scatter from the backward pass (hooks on ``params``)."""
        refused = [n for n, p in zip(names, params) if not (p.is_leaf and p.requires_grad)]
        if refused:
            raise ValueError(
                "With `overlap=True` every parameter must be a leaf tensor that requires grad (its "
                f"gradient is taken from a hook in the backward pass). Received: parameters {refused}"
            )
        self._names = names
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(params)]

    def _hook(self, i):
        def ready(param):
            b = self._bucket_of[i]
            if i in self._arrived[b]:
                raise RuntimeError(
                    f"Parameter {self._names[i]!r} received a second gradient before `apply`: with "
                    "`overlap=True`, call `apply()` after each backward pass (sum micro-batches in the "
                    "loss, or use the optimizer's `gradient_accumulation_steps`)."
                )
            self._put(b, i, param.grad)
            self._launch_ready()
        return ready

    def wait(self):
        """The slices from the hooked backward pass (every parameter must have had a gradient)."""
        missing = [self._names[i] for b, bucket in enumerate(self.buckets) for i in bucket.tensors
                   if i not in self._arrived[b]]
        if missing:
            self._reset()
            raise ValueError(
                "With `overlap=True`, `apply()` needs a backward pass that gave every built parameter a "
                f"gradient. Received no gradient for: {missing}"
            )
        self._launch_ready()
        return self._collect()

    def detach(self):
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
