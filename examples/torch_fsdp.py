"""FSDP2 and distributed checkpoints with `polyak.torch.SGD`, on 2 gloo processes.

`fully_shard` turns each parameter into a DTensor holding half of its rows on each rank; the
optimizer's state (momentum, EMA) is created like the parameters, so it is halved too. Halfway,
`torch.distributed.checkpoint` saves the model and the optimizer from both ranks; a fresh model
and optimizer load it and finish the run, and rank 0 compares the weights with one process that
trained on the full batch without interruption.

Run: python examples/torch_fsdp.py
"""

import os
import socket
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard

from polyak.torch import SGD

STEPS = 100
CONFIG = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, global_clipnorm=1.0, use_ema=True)


def make_problem(n=512):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=generator) * 6 - 3
    return x, torch.sin(x) + 0.1 * torch.randn(n, 1, generator=generator)


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def make_optimizer(model):
    opt = SGD(model.named_parameters(), **CONFIG)
    opt.exclude_from_weight_decay(var_names=["bias"])
    return opt


def train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def sharded(model):
    fully_shard(model[0])
    fully_shard(model[2])
    return fully_shard(model)


def worker(rank, world_size, port, checkpoint):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    x, y = make_problem()
    mine = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
    model = sharded(make_model())
    opt = make_optimizer(model)
    loss = train(model, opt, x[mine], y[mine], STEPS // 2)
    momentum = opt.state[model[0].weight]["momentum"]
    if rank == 0:
        print(f"  halfway, rank 0: loss on its half {loss:.4f}; momentum of 0.weight: local shard "
              f"{tuple(momentum.to_local().shape)} of {tuple(momentum.shape)}", flush=True)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=checkpoint)

    model = sharded(make_model(seed=1))  # other weights: the checkpoint restores them
    opt = make_optimizer(model)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=checkpoint)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    train(model, opt, x[mine], y[mine], STEPS - STEPS // 2)
    weights = [p.detach().full_tensor() for p in model.parameters()]  # gathered only to compare
    if rank == 0:
        single = make_model()
        train(single, make_optimizer(single), x, y, STEPS)
        gap = max((a - b.detach()).abs().max().item() for a, b in zip(weights, single.parameters()))
        print(f"largest weight difference, FSDP2 on {world_size} processes with a checkpoint halfway "
              f"vs one uninterrupted process: {gap:.1e}", flush=True)
    dist.destroy_process_group()


def main(world_size=2):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{world_size} processes, gloo over loopback:")
        mp.spawn(worker, args=(world_size, port, os.path.join(tmp, "checkpoint")), nprocs=world_size)


if __name__ == "__main__":
    main()
