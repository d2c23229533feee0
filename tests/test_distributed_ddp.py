"""polyak on a DistributedDataParallel model: 2 gloo processes equal one process on the full batch.

DDP averages the gradients of the ranks' half-batches, which is the gradient of the mean loss over
the full batch; the optimizer then runs the same step on every rank, so each rank's parameters
equal those of a single process that trains on the full batch (up to float32 rounding of the
all-reduce).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import distributed_launch  # noqa: E402
import polyak  # noqa: E402

STEPS = 6
BATCH = 8
CONFIG = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=0.5,
              use_ema=True, ema_momentum=0.8)


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def make_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 4, generator=generator)
    return x, x.sum(dim=1, keepdim=True).sin()


def train(model, params, x, y):
    opt = polyak.SGD(**CONFIG)
    for _ in range(STEPS):
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.apply([p.grad for p in params], params)
    return opt


def ddp_worker(rank, world_size, port, out_dir):
    distributed_launch.init(rank, world_size, port)
    try:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(make_model())
        x, y = make_data()
        shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        params = list(model.parameters())
        opt = train(model, params, x[shard], y[shard])
        np.savez(f"{out_dir}/rank{rank}.npz", *[p.detach().numpy() for p in params],
                 *[np.asarray(v.numpy()) for v in opt.variables])
    finally:
        dist.destroy_process_group()


def test_ddp_equals_single_process_full_batch(tmp_path):
    distributed_launch.run(ddp_worker, 2, str(tmp_path), timeout=60)

    model = make_model()
    params = list(model.parameters())
    opt = train(model, params, *make_data())
    expected = [p.detach().numpy() for p in params] + [np.asarray(v.numpy()) for v in opt.variables]

    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for k, want in enumerate(expected):
        got0, got1 = ranks[0][f"arr_{k}"], ranks[1][f"arr_{k}"]
        np.testing.assert_array_equal(got0, got1)  # the ranks agree bit for bit
        np.testing.assert_allclose(got0, want, rtol=1e-5, atol=1e-6)
