"""How W ranks split the flattened parameters: contiguous, equal slices, cut into per-tensor pieces.

The P parameter elements are laid end to end (in the order given) and padded with zeros to
``W * S`` with ``S = ceil(P / W)``; rank ``r`` owns elements ``[r * S, (r + 1) * S)``. Where a
slice crosses tensor boundaries it is cut into pieces, one per tensor it touches, so every piece
belongs to exactly one tensor and per-tensor settings (weight-decay exclusion, per-tensor
clipping) apply to it unchanged.
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
