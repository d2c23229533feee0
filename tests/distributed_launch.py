"""Launch a function on W local processes joined in a gloo group over loopback, bounded in time.

Used by the distributed tests: ``run(fn, world_size, *args)`` spawns ``fn(rank, world_size,
port, *args)`` with ``torch.multiprocessing``, and fails (killing the workers) if they do not all
finish within ``timeout`` seconds. ``init(rank, world_size, port)`` joins the group with a
collective timeout, so a rank that waits for a peer that is gone raises instead of hanging.
"""

import os
import socket
import time
from datetime import timedelta

COLLECTIVE_TIMEOUT = timedelta(seconds=30)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank, world_size, port):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)


def run(fn, world_size, *args, timeout=60.0):
    import torch.multiprocessing as mp

    port = free_port()
    context = mp.start_processes(fn, args=(world_size, port, *args), nprocs=world_size, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed workers did not finish within {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
