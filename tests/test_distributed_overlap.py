"""``ShardedOptimizer(overlap=True)``: the reduce-scatter runs during the backward pass, with the same numbers.

Two gloo processes train the same model twice from the same start, without and with overlap
(momentum, global_clipnorm, EMA, a float32 and a float64 layer, three buckets), with each of
the two bucket collectives (gloo's all-reduce, and the uneven reduce-scatter other backends use):
the parameters and the whole state must be equal bit for bit after every step, and with overlap
every bucket must already be launched when ``backward()`` returns. Misuse is refused clearly.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import distributed_launch  # noqa: E402
import polyak  # noqa: E402
from polyak.distributed import ShardedOptimizer  # noqa: E402

STEPS, BATCH = 4, 8
CONFIG = dict(learning_rate=0.1, momentum=0.9, global_clipnorm=0.5, use_ema=True, ema_momentum=0.8)
BUCKET_MB = 100 * 4 / 2**20  # about 100 float32 elements: several buckets


class Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(4, 16)
        self.middle = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 2).double()

    def forward(self, x):
        return self.out(torch.tanh(self.middle(torch.tanh(self.hidden(x)))).double())


def backward(model, step, rank, world_size):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(BATCH, 4, generator=generator)
    y = torch.cat([x.sum(dim=1, keepdim=True).sin(), x[:, :1]], dim=1).double()
    part = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x[part]), y[part]).backward()


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()] + [v.value.clone() for v in opt.shard.variables]


def worker(rank, world_size, port, out):
    distributed_launch.init(rank, world_size, port)
    try:
        results = {}
        runs = {}
        for overlap, all_reduce in [(False, True), (True, True), (False, False), (True, False)]:
            model = Mixed()
            opt = ShardedOptimizer(polyak.SGD(**CONFIG), overlap=overlap, bucket_mb=BUCKET_MB)
            opt.build(model.named_parameters())
            opt._gradients.all_reduce = all_reduce  # gloo's choice, and the reduce-scatter other backends use
            trajectory = []
            for step in range(STEPS):
                backward(model, step, rank, world_size)
                if overlap:
                    results[f"launched_in_backward{step}"] = np.array(len(opt._gradients._works))
                    opt.apply()
                else:
                    opt.apply([p.grad for p in model.parameters()])
                trajectory.append(snapshot(model, opt))
            runs[overlap, all_reduce] = trajectory
        results["buckets"] = np.array(len(opt._gradients.buckets))
        for all_reduce in (True, False):
            results[f"bit_equal{all_reduce}"] = np.array([
                all(torch.equal(a, b) for a, b in zip(plain, overlapped))
                for plain, overlapped in zip(runs[False, all_reduce], runs[True, all_reduce])])
        results["both_collectives_agree"] = np.array(  # two ranks: a sum of two is exact in any order
            all(torch.equal(a, b) for a, b in zip(runs[True, True][-1], runs[True, False][-1])))
        results["moved"] = np.array(not torch.equal(runs[True, True][0][0], runs[True, True][-1][0]))
        results["params"] = np.array(len(list(model.parameters())))

        # misuse: gradients passed to an overlapped apply, two backward passes before apply
        try:
            opt.apply([p.grad for p in model.parameters()])
        except ValueError as error:
            results["grads_given"] = np.array(str(error))
        opt._gradients._reset()
        backward(model, 0, rank, world_size)
        try:
            backward(model, 1, rank, world_size)
        except RuntimeError as error:
            results["twice"] = np.array(str(error))
        for bad in (dict(bucket_mb=0), dict(overlap="yes")):
            try:
                ShardedOptimizer(polyak.SGD(0.1), **bad)
            except ValueError as error:
                results[f"bad_{next(iter(bad))}"] = np.array(str(error))
        np.savez(f"{out}/rank{rank}.npz", **results)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("overlap")
    distributed_launch.run(worker, 2, str(out), timeout=60)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


def test_overlap_equals_plain_bit_for_bit(ranks):
    for results in ranks:
        assert results["bit_equalTrue"].tolist() == [True] * STEPS
        assert results["bit_equalFalse"].tolist() == [True] * STEPS
        assert bool(results["both_collectives_agree"])
        assert bool(results["moved"])


def test_every_bucket_is_launched_during_backward(ranks):
    for results in ranks:
        buckets = int(results["buckets"])
        assert 3 <= buckets <= int(results["params"]), buckets
        for step in range(STEPS):
            assert int(results[f"launched_in_backward{step}"]) == buckets


def test_misuse_is_refused(ranks):
    for results in ranks:
        assert "call `apply()` without `grads`" in str(results["grads_given"])
        assert "received a second gradient before `apply`" in str(results["twice"])
        assert str(results["bad_bucket_mb"]) == "`bucket_mb` must be a number greater than 0. Received: bucket_mb=0"
        assert str(results["bad_overlap"]) == "`overlap` must be True or False. Received: overlap='yes'"
