"""ZeRO-1 on gloo: polyak's ``ShardedOptimizer`` against ``torch.distributed.optim.ZeroRedundancyOptimizer``.

Both train the same MLP (momentum SGD) data-parallel on 1, 2 and 4 local gloo processes; the
batch is split over the ranks. polyak: the local gradients go to ``ShardedOptimizer.apply``
(reduce-scatter, step on the slice, all-gather). torch: the model is wrapped in
``DistributedDataParallel`` (bucketed all-reduce during backward) and stepped by
``ZeroRedundancyOptimizer`` over ``torch.optim.SGD`` (each rank steps its parameters, then
broadcasts them). Printed per worker: the median time of a whole training step (forward,
backward, communication, update), the optimizer state held, and the bytes this process wrote
to its sockets per step (``wchar`` of ``/proc/self/io``, gloo's TCP writes; Linux only).

With ``--overlap``, a third row per world size: ``ShardedOptimizer(overlap=True)``, which
reduce-scatters buckets of ``--bucket-mb`` MiB from gradient hooks during the backward pass.

Run: python benchmarks/zero1_gloo.py [--steps 20] [--width 512] [--overlap] [--bucket-mb 1]
"""

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import polyak  # noqa: E402
from polyak.distributed import ShardedOptimizer  # noqa: E402

BATCH = 64


def make_model(width):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, 1))


def written():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


def run(kind, rank, world_size, steps, width, bucket_mb):
    model = make_model(width)
    x = torch.randn(BATCH, 64, generator=torch.Generator().manual_seed(1))
    y = x[:, :1].sin()
    mine = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    if kind.startswith("polyak"):
        overlap = kind == "polyak overlap"
        opt = ShardedOptimizer(polyak.SGD(0.01, momentum=0.9), overlap=overlap, bucket_mb=bucket_mb)
        opt.build(model.named_parameters())

        def step():
            model.zero_grad()
            torch.nn.functional.mse_loss(model(x[mine]), y[mine]).backward()
            opt.apply() if overlap else opt.apply([p.grad for p in model.parameters()])

        state = opt.state_bytes
    else:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)
        opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=torch.optim.SGD, lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad()
            torch.nn.functional.mse_loss(ddp(x[mine]), y[mine]).backward()
            opt.step()

        def state():
            return sum(t.numel() * t.element_size() for s in opt.optim.state.values() for t in s.values()
                       if isinstance(t, torch.Tensor) and t.ndim > 0)
    for _ in range(3):
        step()
    times, before = [], written()
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    barriers = written() - before  # the barriers' bytes are counted too: measured separately below
    before = written()
    for _ in range(steps):
        dist.barrier()
    barriers_alone = written() - before
    return statistics.median(times), state(), (barriers - barriers_alone) / steps


def worker(rank, world_size, port, steps, width, bucket_mb, kinds, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    rows = [(kind, *run(kind, rank, world_size, steps, width, bucket_mb)) for kind in kinds]
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--overlap", action="store_true", help="add ShardedOptimizer(overlap=True)")
    parser.add_argument("--bucket-mb", type=float, default=1.0, help="ShardedOptimizer's bucket size (MiB)")
    args = parser.parse_args()
    kinds = ("polyak", "polyak overlap", "torch") if args.overlap else ("polyak", "torch")
    params = sum(p.numel() for p in make_model(args.width).parameters())
    print(f"MLP of {params} float32 parameters ({params * 4 / 1e6:.2f} MB), momentum SGD, batch {BATCH}, "
          f"{args.steps} timed steps; per worker (rank 0), gloo over loopback, {os.cpu_count()} CPU cores")
    print("| workers | optimizer | step time (median) | optimizer state | bytes sent per step |")
    print("|---|---|---|---|---|")
    for world_size in (1, 2, 4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.pt")
            mp.spawn(worker, args=(world_size, port, args.steps, args.width, args.bucket_mb, kinds, out),
                     nprocs=world_size)
            for kind, seconds, state, sent in torch.load(out):
                name = {"polyak": "polyak ShardedOptimizer", "polyak overlap": "polyak ShardedOptimizer(overlap=True)",
                        "torch": "torch ZeroRedundancyOptimizer + DDP"}[kind]
                print(f"| {world_size} | {name} | {seconds * 1e3:.1f} ms | {state / 1e6:.2f} MB | "
                      f"{max(sent, 0) / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
