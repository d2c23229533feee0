"""Distributed bad input: a peer that dies or hangs mid-step, DTensor parameters on different
device meshes, checkpoints loaded on another world size.

Each launch is 2 gloo processes on 127.0.0.1 with a 5 s collective timeout, bounded at 40 s.
"""

import json
import os
import pickle
import time
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import distributed_launch  # noqa: E402
import polyak  # noqa: E402
from polyak.distributed import DistributedTimeoutError, ShardedOptimizer  # noqa: E402

TIMEOUT = 5.0
BOUND = 40.0


def init(rank, world_size, port):
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=TIMEOUT))


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def step(model, opt, rank):
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(rank))
    model.zero_grad()
    model(x).square().mean().backward()
    opt.apply([p.grad for p in model.parameters()])


def report(out_dir, rank, **result):
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def peer_lost_worker(rank, world_size, port, out_dir, when, how):
    """Both ranks step and save once; then rank 1 dies (``os._exit``) or hangs past the timeout
    just before the ``when`` collective ("apply" or "save_sharded"), which rank 0 runs alone."""
    init(rank, world_size, port)
    model = make_model()
    opt = ShardedOptimizer(polyak.SGD(0.1, momentum=0.9, global_clipnorm=1.0))
    opt.build(model.named_parameters())
    step(model, opt, rank)
    checkpoint = os.path.join(out_dir, "checkpoint")
    opt.save_sharded(checkpoint)
    step(model, opt, rank)
    if rank == 1:
        if how == "dies":
            os._exit(0)
        time.sleep(TIMEOUT + 4)  # alive but silent: rank 0 must give up at its timeout
        os._exit(0)
    with open(os.path.join(checkpoint, "index.json"), "rb") as f:
        index_before = f.read()
    files_before = sorted(os.listdir(checkpoint))
    start = time.monotonic()
    try:
        step(model, opt, rank) if when == "apply" else opt.save_sharded(checkpoint)
    except DistributedTimeoutError as error:
        raised = (type(error).__name__, str(error))
    else:
        raised = None
    with open(os.path.join(checkpoint, "index.json"), "rb") as f:
        index_after = f.read()
    report(out_dir, rank, raised=raised, seconds=time.monotonic() - start, index_unchanged=index_before == index_after,
           files_unchanged=files_before == sorted(os.listdir(checkpoint)))
    os._exit(0)  # the group is broken: skip its teardown


def load_worker(rank, world_size, port, out_dir):
    """Load the 2-rank checkpoint on ``world_size`` ranks (resharding) and record the state."""
    init(rank, world_size, port)
    model = make_model()
    opt = ShardedOptimizer(polyak.SGD(0.1, momentum=0.9, global_clipnorm=1.0))
    opt.build(model.named_parameters())
    opt.load_sharded(os.path.join(out_dir, "checkpoint"))
    report(out_dir, f"load{rank}", iterations=int(opt.iterations.value))
    dist.destroy_process_group()


@pytest.mark.parametrize("when,how", [("apply", "dies"), ("save_sharded", "dies"), ("save_sharded", "hangs")])
def test_a_lost_peer_raises_a_clear_error_and_the_checkpoint_stays_whole(tmp_path, when, how):
    distributed_launch.run(peer_lost_worker, 2, str(tmp_path), when, how, timeout=BOUND)
    with open(tmp_path / "rank0.pkl", "rb") as f:
        got = pickle.load(f)
    assert got["raised"] is not None, "rank 0 went on without its peer"
    name, message = got["raised"]
    assert name == "DistributedTimeoutError"
    assert f"ShardedOptimizer.{when}" in message and "rank 0 of 2" in message
    assert "a peer rank did not answer within the process group's timeout of 5 s" in message
    assert got["seconds"] < 3 * TIMEOUT
    assert got["index_unchanged"] and got["files_unchanged"]

    distributed_launch.run(load_worker, 1, str(tmp_path), timeout=BOUND)  # the previous save, resharded 2 -> 1
    with open(tmp_path / "rankload0.pkl", "rb") as f:
        assert pickle.load(f)["iterations"] == 1
    with open(tmp_path / "checkpoint" / "index.json") as f:
        assert json.load(f)["world_size"] == 2


def meshes_worker(rank, world_size, port, out_dir):
    """Two DTensor parameters, on a 1-D mesh and on a 2-D mesh over the same two ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from polyak.torch import SGD as TorchSGD

    init(rank, world_size, port)
    flat = init_device_mesh("cpu", (2,), mesh_dim_names=("data",))
    square = init_device_mesh("cpu", (1, 2), mesh_dim_names=("replica", "shard"))
    torch.manual_seed(0)
    a = torch.nn.Parameter(distribute_tensor(torch.randn(4, 2), flat, [Shard(0)]))
    b = torch.nn.Parameter(distribute_tensor(torch.randn(4, 2), square, [Shard(0), Shard(0)]))
    before = [a.to_local().clone(), b.to_local().clone()]
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    errors = []
    for make in (lambda: polyak.SGD(0.1, momentum=0.9).build([a, b]),
                 lambda: TorchSGD([("a", a), ("b", b)], lr=0.1, momentum=0.9).step()):  # builds on its first step
        try:
            make()
        except ValueError as error:
            errors.append(str(error))
    report(out_dir, rank, errors=errors,
           unchanged=all(torch.equal(x, y.to_local()) for x, y in zip(before, [a, b])))
    dist.destroy_process_group()


def test_dtensor_parameters_on_different_meshes_are_refused(tmp_path):
    distributed_launch.run(meshes_worker, 2, str(tmp_path), timeout=BOUND)
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            got = pickle.load(f)
        assert len(got["errors"]) == 2 and got["unchanged"]
        assert "'variable_0' on" in got["errors"][0] and "'variable_1' on" in got["errors"][0]
        for message in got["errors"]:
            assert "must be on the same device mesh" in message
            assert "data=2" in message and "replica=1, shard=2" in message


def dtensor_checkpoint_worker(rank, world_size, port, out_dir):
    """One rank, one DTensor parameter: polyak.save and polyak.load refuse its sharded state."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    init(rank, world_size, port)
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("data",))
    w = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
    w.grad = torch.ones_like(w)
    opt = polyak.SGD(0.1, momentum=0.9)
    opt.apply([w.grad], [w])
    momentum = opt.momentums[0].value.to_local().clone()
    errors, path = [], os.path.join(out_dir, "state.ckpt")
    try:
        polyak.save(path, opt)
    except ValueError as error:
        errors.append(str(error))
    plain = polyak.SGD(0.1, momentum=0.9)  # a file of whole arrays with the same keys, to load from
    plain.apply([torch.ones(4, 2)], [torch.nn.Parameter(torch.ones(4, 2))])
    polyak.save(path, plain)
    try:
        polyak.load(path, opt)
    except ValueError as error:
        errors.append(str(error))
    report(out_dir, rank, errors=errors, unchanged=torch.equal(momentum, opt.momentums[0].value.to_local()))
    dist.destroy_process_group()


def test_a_single_file_checkpoint_refuses_sharded_state_and_changes_nothing(tmp_path):
    distributed_launch.run(dtensor_checkpoint_worker, 1, str(tmp_path), timeout=BOUND)
    with open(tmp_path / "rank0.pkl", "rb") as f:
        got = pickle.load(f)
    assert len(got["errors"]) == 2 and got["unchanged"]
    for action, message in zip(("save", "load"), got["errors"]):
        assert f"`polyak.{action}` reads and writes whole arrays" in message and "DTensor" in message
        assert "torch.distributed.checkpoint" in message
