"""Norms for clipping when the state is sharded: sums of squares added over the ranks; and a
guarded step's flag, agreed on by the ranks."""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from polyak.distributed import failures


class RankSquares:
    """Norms for clipping over the whole tensors: this rank's descending pieces' sums of squares
    are added over the ranks (one all-reduce of a vector with an entry per tensor, or of a scalar),
    in at least float32."""

    def __init__(self, pieces, n_tensors, process_group):
        self.pieces, self.n_tensors, self.process_group = pieces, n_tensors, process_group

    @staticmethod
    def _dtype(squares):
        return functools.reduce(torch.promote_types, [s.dtype for s in squares], torch.float32)

    def per_tensor(self, xp, squares):
        totals = torch.zeros(self.n_tensors, dtype=self._dtype(squares))
        for s, pc in zip(squares, self.pieces):
            totals[pc.tensor] += s.reshape(())
        with failures.peers("ShardedOptimizer.apply (all-reduce of the clipping norms)", self.process_group):
            dist.all_reduce(totals, group=self.process_group)
        return [totals[pc.tensor].to(s.dtype).reshape(s.shape) for s, pc in zip(squares, self.pieces)]

    def total(self, xp, squares):
        dtype = self._dtype(squares)
        total = torch.stack([s.to(dtype) for s in squares]).sum().reshape(1)
        with failures.peers("ShardedOptimizer.apply (all-reduce of the clipping norm)", self.process_group):
            dist.all_reduce(total, group=self.process_group)
        return total[0].to(functools.reduce(torch.promote_types, [s.dtype for s in squares]))

    def agree(self, xp, finite):
        """A guarded step's flag (``polyak.core.nonfinite``) as every rank agrees on it: false when
        it is false on any rank (one all-reduce), so that the ranks skip together."""
        flag = torch.as_tensor(finite).to(torch.int32).reshape(1)
        with failures.peers("ShardedOptimizer.apply (agreeing on non-finite values)", self.process_group):
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.process_group)
        return flag[0] != 0 if isinstance(finite, torch.Tensor) else bool(flag[0])
