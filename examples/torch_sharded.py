"""Sharded optimizer state on 2 processes (ZeRO-1) with `polyak.distributed.ShardedOptimizer`.

Two gloo processes on 127.0.0.1 each take half of every batch. Each rank keeps the momentum and
the EMA for half of the parameters only. The gradients are reduce-scattered, each rank updates
its half, and the halves are all-gathered. At the end rank 0 compares the weights with one
process training on the full batch, and writes two checkpoints: one file per rank (nothing
gathered), and the unsharded state in polyak.save's format. Only rank 0 prints (the other's
state size reaches it by ``gather_object``), so the two processes' lines never interleave.

Run: python examples/torch_sharded.py
"""

import os
import socket
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import polyak
from polyak.distributed import ShardedOptimizer
from polyak.optimizers.structure import NamedWeights

STEPS = 200
CONFIG = dict(learning_rate=0.05, momentum=0.9, nesterov=True, global_clipnorm=1.0, use_ema=True)


def make_problem(n=512):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=generator) * 6 - 3
    return x, torch.sin(x) + 0.1 * torch.randn(n, 1, generator=generator)


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def loss_of(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


def worker(rank, world_size, port, checkpoint, sharded_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    x, y = make_problem()
    mine = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
    model = make_model()
    params = list(model.parameters())
    opt = ShardedOptimizer(polyak.SGD(**CONFIG))
    opt.build(model.named_parameters())
    for step in range(STEPS + 1):
        model.zero_grad()
        loss = loss_of(model, x[mine], y[mine])
        loss.backward()
        opt.apply([p.grad for p in params])
        if rank == 0 and step % 50 == 0:
            print(f"  step {step:4d}  loss on rank 0's half {loss.item():.4f}")
    full_bytes = 2 * 4 * sum(p.numel() for p in params)  # momentum + EMA, float32
    state_bytes = [None] * world_size if rank == 0 else None
    dist.gather_object(opt.state_bytes(), state_bytes, dst=0)
    if rank == 0:
        for other, size in enumerate(state_bytes):
            print(f"  rank {other}: optimizer state {size} bytes of {full_bytes} unsharded")
    opt.save_sharded(sharded_dir)  # each rank writes its own file; rank 0 adds index.json
    opt.save(checkpoint)
    if rank == 0:
        single = make_model()
        reference = polyak.SGD(**CONFIG)
        for _ in range(STEPS + 1):
            single.zero_grad()
            loss_of(single, x, y).backward()
            reference.apply([p.grad for p in single.parameters()], list(single.parameters()))
        gap = max((a - b).abs().max().item() for a, b in zip(params, single.parameters()))
        print(f"largest weight difference, {world_size} sharded processes vs one: {gap:.1e}", flush=True)
    dist.destroy_process_group()


def main(world_size=2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, sharded_dir = os.path.join(tmp, "sharded.ckpt"), os.path.join(tmp, "per-rank")
        print(f"{world_size} processes, gloo over loopback:")
        mp.spawn(worker, args=(world_size, port, checkpoint, sharded_dir), nprocs=world_size)
        print(f"per-rank checkpoint: {sorted(os.listdir(sharded_dir))}")
        # one process, no process group: a plain optimizer built on a fresh model's weights, with the
        # same names as the sharded one (the checkpoint keys its state by them)
        model = make_model()
        restored = polyak.SGD(**CONFIG)
        restored.build(NamedWeights(list(model.parameters()), [name for name, _ in model.named_parameters()]))
        polyak.load(checkpoint, restored)
        print(f"checkpoint: the unsharded state ({len(restored.variables)} variables, iteration "
              f"{int(restored.iterations.numpy())}), loaded here into a plain polyak.SGD on one process")


if __name__ == "__main__":
    main()
