"""What the foreach tier needs for DTensors (FSDP2's sharded parameters): norms over the full
tensors, and writes into the local shards.

A DTensor's sum of squares is the sum of its shards' sums, over the mesh dimensions along
which it is sharded (a replicated dimension holds the same values on every rank and is not
summed again). Each rank squares and sums its local shards, then the sums of all tensors on
one mesh with one placement are all-reduced together: one small collective per (mesh,
placements), whatever the number of tensors, and never a gather of a full tensor.

For plain tensors this is the local computation alone.

DTensor has no sharding rule for ``torch._foreach_copy_``; since the step is elementwise,
every new value has its target's placements, and the write copies local shard into local shard.
"""

from __future__ import annotations

import torch


def dtensor_class():
    """torch's DTensor class, or None when this torch has no distributed support."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support: no DTensor exists
        return None
    return DTensor


def check_one_mesh(parameters, paths):
    """Refuse DTensor ``parameters`` (named by ``paths``) that live on different device meshes:
    the step's norms and writes assume one mesh for all of them."""
    dtensor = dtensor_class()
    sharded = [(p, path) for p, path in zip(parameters, paths) if dtensor is not None and isinstance(p, dtensor)]
    for p, path in sharded[1:]:
        first, first_path = sharded[0]
        if p.device_mesh != first.device_mesh:
            raise ValueError(
                "Every DTensor parameter of one optimizer must be on the same device mesh. Received: "
                f"{first_path!r} on {first.device_mesh} and {path!r} on {p.device_mesh}"
            )


def sums_of_squares(grads):
    """``[sum(g ** 2) for g in grads]`` over the full tensors, in float64, as a 1-d tensor on
    the gradients' device."""
    dtensor = dtensor_class()
    is_sharded = [dtensor is not None and isinstance(g, dtensor) for g in grads]
    local = [g.to_local() if sharded else g for g, sharded in zip(grads, is_sharded)]
    sums = torch.stack(torch._foreach_norm(local, 2, dtype=torch.float64)).square()
    groups = {}
    for i, (g, sharded) in enumerate(zip(grads, is_sharded)):
        if sharded:
            groups.setdefault((g.device_mesh, tuple(g.placements)), []).append(i)
    for (mesh, placements), indices in groups.items():
        sums[indices] = _summed_over_shards(sums[indices], mesh, placements, [grads[i] for i in indices])
    return sums


def _summed_over_shards(local_sums, mesh, placements, grads):
    from torch.distributed.tensor import DTensor, Partial, Replicate

    if any(p.is_partial() for p in placements):  # pending reductions: let DTensor resolve each tensor
        return torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64).full_tensor() for g in grads]).square()
    summed = [Partial() if p.is_shard() else Replicate() for p in placements]
    return DTensor.from_local(local_sums, mesh, summed, run_check=False).full_tensor()


def copy_(targets, values):
    """``torch._foreach_copy_(targets, values)``, DTensors written shard by shard."""
    dtensor = dtensor_class()
    if dtensor is None or not any(isinstance(t, dtensor) for t in targets):
        torch._foreach_copy_(targets, values)
        return
    local_values = []
    for t, v in zip(targets, values):
        if isinstance(v, dtensor):
            v = (v if v.placements == t.placements else v.redistribute(t.device_mesh, t.placements)).to_local()
        local_values.append(v)
    torch._foreach_copy_([t.to_local() if isinstance(t, dtensor) else t for t in targets], local_values)
