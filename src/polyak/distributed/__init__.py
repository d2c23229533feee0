"""Training across processes: optimizer state sharded over a ``torch.distributed`` group."""

from polyak.distributed.failures import DistributedTimeoutError
from polyak.distributed.sharded import ShardedOptimizer

__all__ = ["DistributedTimeoutError", "ShardedOptimizer"]
