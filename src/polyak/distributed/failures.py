"""A collective that a peer never answered: one clear error instead of the backend's.

When a rank dies (its sockets close) or stops calling collectives (it hangs, or runs other
code), the surviving ranks' next collective fails: gloo raises a ``RuntimeError`` ("Connection
closed by peer", or a timeout once the process group's timeout has passed), NCCL a
``DistBackendError``. :func:`peers` turns those into :class:`DistributedTimeoutError`, which
names the operation, this rank, the world size and the configured timeout. The process group
is unusable afterwards (as it is after any failed collective): restart the job and resume from
the last checkpoint.
"""

from __future__ import annotations

import contextlib

import torch.distributed as dist


class DistributedTimeoutError(RuntimeError):
    """A collective did not complete: a peer rank died, hung, or did not answer within the
    process group's timeout."""


def timeout_seconds(process_group=None):
    """The collective timeout configured for ``process_group`` (seconds), or None if unknown."""
    group = process_group if process_group is not None else dist.group.WORLD
    try:
        backend = group._get_backend(group._device_types[0] if group._device_types else None)
        return backend.options._timeout.total_seconds()
    except (AttributeError, IndexError, RuntimeError, TypeError):
        return None


@contextlib.contextmanager
def peers(operation, process_group=None):
    """Run the collectives of ``operation`` (e.g. ``"ShardedOptimizer.apply: all-gather"``),
    raising :class:`DistributedTimeoutError` if a peer does not answer."""
    try:
        yield
    except DistributedTimeoutError:
        raise
    except RuntimeError as error:  # gloo raises RuntimeError; NCCL's DistBackendError is one too
        rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
        timeout = timeout_seconds(process_group)
        within = f"within the process group's timeout of {timeout:g} s" if timeout is not None else "in time"
        raise DistributedTimeoutError(
            f"{operation} failed on rank {rank} of {world}: a peer rank did not answer {within} (it died, "
            "hung, or is running a different collective). The process group cannot be used any more; restart "
            f"the job and resume from the last checkpoint. The backend reported: {error}"
        ) from error
