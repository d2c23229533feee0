"""How W ranks split the flattened parameters: contiguous, equal slices, cut into per-tensor pieces.

The P parameter elements are laid end to end (in the order given) and padded with zeros to
``W * S`` with ``S = ceil(P / W)``; rank ``r`` owns elements ``[r * S, (r + 1) * S)``. Where a
slice crosses tensor boundaries it is cut into pieces, one per tensor it touches, so every piece
belongs to exactly one tensor and per-tensor settings (weight-decay exclusion, per-tensor
clipping) apply to it unchanged. Parameters of different dtypes are laid out separately, one
flat vector (and one such split) per dtype.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple


class Piece(NamedTuple):
    """Elements ``[start, stop)`` of tensor ``tensor``, at ``[local, local + stop - start)`` of the slice."""

    tensor: int
    start: int
    stop: int
    local: int


class FlatLayout(NamedTuple):
    shapes: tuple
    offsets: tuple  # where each tensor starts in the flat vector; offsets[-1] is P
    world_size: int
    shard_size: int  # S

    @classmethod
    def of(cls, shapes, world_size):
        offsets = [0]
        for shape in shapes:
            size = 1
            for n in shape:
                size *= n
            offsets.append(offsets[-1] + size)
        return cls(tuple(tuple(s) for s in shapes), tuple(offsets), world_size, -(-offsets[-1] // world_size))

    @property
    def padded_size(self):
        return self.shard_size * self.world_size

    def pieces(self, rank):
        """The pieces of rank ``rank``'s slice, in flat order."""
        lo, hi = rank * self.shard_size, (rank + 1) * self.shard_size
        out = []
        for i in range(len(self.shapes)):
            a, b = max(self.offsets[i], lo), min(self.offsets[i + 1], hi)
            if a < b:
                out.append(Piece(i, a - self.offsets[i], b - self.offsets[i], a - lo))
        return out

    def checksum(self, names):
        """A digest of names and shapes: ranks compare it to catch different parameter lists."""
        text = repr([(str(n), s) for n, s in zip(names, self.shapes)])
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")


class Part(NamedTuple):
    """One piece of this rank's state: elements ``[start, stop)`` of parameter ``tensor`` (its
    position in the built list), at ``[local, local + stop - start)`` of dtype group ``group``'s slice."""

    tensor: int
    group: int
    start: int
    stop: int
    local: int

    @property
    def size(self):
        return self.stop - self.start


class DtypeGroup(NamedTuple):
    """The parameters of one dtype (positions in the built list, in order) and their flat layout."""

    dtype: object
    tensors: tuple
    layout: FlatLayout


def dtype_groups(params, world_size):
    """One :class:`DtypeGroup` per dtype, in the order the dtypes first appear."""
    positions = {}
    for i, p in enumerate(params):
        positions.setdefault(p.dtype, []).append(i)
    return [DtypeGroup(dtype, tuple(tensors), FlatLayout.of([tuple(params[i].shape) for i in tensors], world_size))
            for dtype, tensors in positions.items()]


def parts(groups, rank):
    """This rank's pieces over every dtype group, group after group, each in flat order."""
    return [Part(group.tensors[pc.tensor], g, pc.start, pc.stop, pc.local)
            for g, group in enumerate(groups) for pc in group.layout.pieces(rank)]
