"""Checkpoints of a ``ShardedOptimizer`` written per rank: no rank gathers the state.

A checkpoint is a directory holding

* one file per rank, ``shard-{tag}-{rank:05d}-of-{W:05d}.safetensors`` (polyak's checkpoint file:
  safetensors, checksummed, written atomically; see :mod:`polyak.saving.files`). For each
  parameter the rank holds a piece of, ``{name}/{role}`` is that piece of the role's state
  (1-D: elements ``[start, stop)`` of the flattened tensor); the scalars (``iteration``,
  ``learning_rate``, ``skipped_steps``), the same on every rank, are in every file;
* ``index.json``, written by rank 0 once every rank's file is complete: the world size, the
  parameters (name, shape, dtype), the state roles, and which piece of which parameter each
  file holds.

The index is written last and atomically and names the files by a tag new to each save; the
previous save's files are removed only after it. A save that fails on any rank (the ranks agree
on that before the index is written) or dies part-way leaves the previous checkpoint whole.

Loading on any number of ranks: each rank reads the index, checks its parameters and roles
against it, reads only the files holding elements of its own pieces, and copies the overlaps.
The ranks agree (one all-reduce) that every rank read its part before any rank assigns
anything: a missing or damaged file, or another model's checkpoint, raises on every rank and
changes nothing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets

import torch
import torch.distributed as dist

from polyak.distributed import failures
from polyak.distributed import layout as layout_mod
from polyak.saving import files
from polyak.saving.checkpoint import to_numpy

INDEX = "index.json"
FORMAT = "polyak.sharded_checkpoint"
VERSION = 1


def _file_name(tag, rank, world_size):
    return f"shard-{tag}-{rank:05d}-of-{world_size:05d}.safetensors"


def _agree(opt, failed, operation):
    """Whether any rank failed (one all-reduce; every rank must call it)."""
    flag = torch.tensor([float(failed)])
    with failures.peers(operation, opt.process_group):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=opt.process_group)
    return bool(flag[0])


def _parameters(opt):
    return [{"name": n, "shape": list(p.shape), "dtype": str(p.dtype).replace("torch.", "")}
            for n, p in zip(opt.names, opt.params)]


def save(opt, directory):
    """Every rank writes its file; rank 0 then writes the index and removes the previous save's files."""
    tag = [secrets.token_hex(6) if opt.rank == 0 else None]
    with failures.peers("ShardedOptimizer.save_sharded (sharing the save's tag)", opt.process_group):
        dist.broadcast_object_list(tag, group=opt.process_group, group_src=0)
    tag = tag[0]
    error, path = None, os.path.join(directory, _file_name(tag, opt.rank, opt.world_size))
    try:
        os.makedirs(directory, exist_ok=True)
        tensors = {key: to_numpy(var) for key, var in opt.shard.state_roles.scalars()}
        for role, variables in opt.shard.state_roles.per_weight:
            for var, pt in zip(variables, opt.parts):
                if var is not None:
                    tensors[f"{opt.names[pt.tensor]}/{role}"] = to_numpy(var)
        files.write(path, tensors,
                    {"rank": str(opt.rank), "world_size": str(opt.world_size)})
    except Exception as caught:  # noqa: BLE001 - re-raised below, after the ranks agree
        error = caught
    try:
        failed = _agree(opt, error is not None, "ShardedOptimizer.save_sharded (agreeing that every shard was written)")
    except failures.DistributedTimeoutError:
        _remove(path)  # no index will name it: the previous checkpoint stays whole
        raise
    if failed:
        if error is not None:
            raise error
        raise RuntimeError(f"Another rank failed to write its shard to {directory!r}; the index was not written, "
                           "so the previous checkpoint there (if any) is unchanged.")
    if opt.rank == 0:
        _write_index(opt, directory, tag)
    with failures.peers("ShardedOptimizer.save_sharded (barrier after the index)", opt.process_group):
        dist.barrier(group=opt.process_group)


def _remove(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_index(opt, directory, tag):
    names = [_file_name(tag, r, opt.world_size) for r in range(opt.world_size)]
    index = {
        "format": FORMAT, "format_version": VERSION, "world_size": opt.world_size,
        "optimizer": type(opt.optimizer).__name__,
        "parameters": _parameters(opt),
        "roles": [role for role, _ in opt.shard.state_roles.per_weight],
        "files": [{"file": name, "pieces": [[opt.names[pt.tensor], pt.start, pt.stop]
                                           for pt in layout_mod.parts(opt.groups, r)]}
                  for r, name in enumerate(names)],
    }
    files.atomic_write(os.path.join(directory, INDEX), json.dumps(index, indent=1).encode())
    for stale in glob.glob(os.path.join(directory, "shard-*.safetensors")):
        if os.path.basename(stale) not in names:
            _remove(stale)


def load(opt, directory):
    """Read this rank's part of the checkpoint in ``directory``, agree, then assign."""
    error = None
    try:
        assignments = _read(opt, directory)
    except Exception as caught:  # noqa: BLE001 - re-raised below, after the ranks agree
        error = caught
    if _agree(opt, error is not None, "ShardedOptimizer.load_sharded (agreeing that every rank read its part)"):
        if error is not None:
            raise error
        raise RuntimeError(f"Another rank could not read its part of the checkpoint {directory!r}. Nothing was "
                           "loaded.")
    for var, value in assignments:
        var.assign(value)


def _read(opt, directory):
    """``[(variable, value)]`` for every variable of this rank's shard, or an error naming the problem."""
    index = _index(opt, directory)
    where = {}
    for entry in index["files"]:
        for name, start, stop in entry["pieces"]:
            where.setdefault(name, []).append((entry["file"], start, stop))
    opened = {}

    def tensors(file):
        if file not in opened:
            opened[file] = files.read(os.path.join(directory, file))[0]
        return opened[file]

    assignments = []
    for role, variables in opt.shard.state_roles.per_weight:
        for var, pt in zip(variables, opt.parts):
            if var is None:
                continue
            name, key = opt.names[pt.tensor], f"{opt.names[pt.tensor]}/{role}"
            value, covered = torch.empty(pt.size, dtype=var.value.dtype), 0
            for file, start, stop in where.get(name, ()):
                lo, hi = max(start, pt.start), min(stop, pt.stop)
                if lo < hi:
                    stored = tensors(file).get(key)
                    if stored is None or stored.shape != (stop - start,):
                        raise ValueError(f"Checkpoint file {file!r} in {directory!r} lacks {key!r} (elements "
                                         f"{start}..{stop}) that its index lists. Nothing was loaded.")
                    value[lo - pt.start:hi - pt.start] = torch.from_numpy(stored[lo - start:hi - start].copy())
                    covered += hi - lo
            if covered != pt.size:
                raise ValueError(f"The checkpoint {directory!r} does not cover elements {pt.start}..{pt.stop} of "
                                 f"{key!r}. Nothing was loaded.")
            assignments.append((var, value.reshape(var.value.shape)))
    first = tensors(next(iter(opened), index["files"][0]["file"]))
    for key, var in opt.shard.state_roles.scalars():
        if key not in first:
            raise ValueError(f"The checkpoint {directory!r} has no {key!r}. Nothing was loaded.")
        assignments.append((var, torch.from_numpy(first[key].copy()).to(var.value.dtype).reshape(var.value.shape)))
    return assignments


def _index(opt, directory):
    path = os.path.join(directory, INDEX)
    try:
        with open(path, "rb") as file:
            index = json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory!r} holds no sharded checkpoint: {INDEX} is missing.") from None
    except ValueError as error:
        raise ValueError(f"{path!r} is not a sharded checkpoint index: {error}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("format_version") != VERSION:
        raise ValueError(f"{path!r} is not a version-{VERSION} polyak sharded checkpoint index. Received: "
                         f"format={index.get('format') if isinstance(index, dict) else None!r}")
    mine, theirs = _parameters(opt), index["parameters"]
    if sorted(mine, key=str) != sorted(theirs, key=str):
        names = {p["name"] for p in theirs}
        missing = [p["name"] for p in mine if p["name"] not in names]
        unexpected = sorted(names - {p["name"] for p in mine})
        differ = [f"{p['name']}: file {q}, expected {p}" for p in mine for q in theirs
                  if p["name"] == q["name"] and p != q]
        raise ValueError(f"The checkpoint {directory!r} is of other parameters. Nothing was loaded. Missing: "
                         f"{missing}; unexpected: {unexpected}; different: {differ}")
    roles = [role for role, _ in opt.shard.state_roles.per_weight]
    if sorted(roles) != sorted(index["roles"]):
        raise ValueError(f"The checkpoint {directory!r} holds the state roles {index['roles']}; this optimizer keeps "
                         f"{roles} (a different configuration). Nothing was loaded.")
    return index
