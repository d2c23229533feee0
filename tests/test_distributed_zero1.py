"""``ShardedOptimizer`` with every feature, and per-rank checkpoints that load on other world sizes.

Two gloo processes (one launch) train three configurations, each compared with one process on
the full batch: mixed dtypes (float32 and float64 layers, one flat layout each) with weight decay
excluded by name; a constraint that needs the whole tensor (rows scaled to unit norm) and an
``overwrite_with_gradient`` bias; bfloat16 weights with float32 masters and a constraint on a
mastered weight. The mixed-dtype run saves a per-rank checkpoint halfway; a one-rank subgroup
saves one too; the checkpoints are then loaded 1 -> 2 and 2 -> 1 (in the same launch) and 2 -> 4
(a second, 4-process launch), and each continues the single-process trajectory.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import distributed_launch  # noqa: E402
import polyak  # noqa: E402
from polyak.distributed import ShardedOptimizer  # noqa: E402
from polyak.optimizers.structure import NamedWeights  # noqa: E402

STEPS, HALFWAY, BATCH = 6, 3, 8
NAN_STEP = 4  # with skip_nonfinite the last rank's gradient is poisoned on this step: every rank skips it
CONFIGS = {
    "mixed_dtypes": dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.05, clipnorm=0.2,
                         use_ema=True, ema_momentum=0.8, gradient_accumulation_steps=2, skip_nonfinite=True),
    "constraints": dict(learning_rate=0.1, momentum=0.5, global_clipnorm=0.3, use_ema=True, ema_momentum=0.7),
    "master_weights": dict(learning_rate=0.01, momentum=0.9, weight_decay=0.1, use_ema=True, master_weights=True),
}


class Mixed(torch.nn.Module):
    """A float32 layer feeding a float64 layer: two dtype groups."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 2).double()

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)).double())


def unit_rows(w):
    return w / w.norm(dim=1, keepdim=True)


def make_model(name):
    torch.manual_seed(0)
    if name == "mixed_dtypes":
        return Mixed()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    if name == "master_weights":
        model = model.to(torch.bfloat16)
    model[0].weight.constraint = unit_rows  # crosses the ranks' slices: needs the whole tensor
    if name == "constraints":
        model[2].bias.overwrite_with_gradient = True
    return model


def make_optimizer(name):
    opt = polyak.SGD(**CONFIGS[name])
    opt.exclude_from_weight_decay(var_names=["bias"])
    return opt


def data(name):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 4, generator=generator)
    y = torch.cat([x.sum(dim=1, keepdim=True).sin(), x[:, :1]], dim=1)
    dtype = next(make_model(name).parameters()).dtype
    return x.to(dtype), y.to(torch.float64 if name == "mixed_dtypes" else dtype)


def gradients(name, model, step, rank, world_size):
    """This rank's gradients; bfloat16 ranks all take the full batch (their mean is then exact)."""
    x, y = data(name)
    if name != "master_weights":
        part = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        x, y = x[part], y[part]
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    if "skip_nonfinite" in CONFIGS[name] and step == NAN_STEP and rank == world_size - 1:
        grads[0][0, 0] = float("nan")
    return grads


def single_process(name, steps=STEPS):
    model = make_model(name)
    named = list(model.named_parameters())
    params = [p for _, p in named]
    opt = make_optimizer(name)
    opt.build(NamedWeights(params, [n for n, _ in named]))
    for step in range(steps):
        opt.apply(gradients(name, model, step, 0, 1), params)
    return params, opt


def train(name, model, opt, steps, rank, world_size, first=0):
    for step in range(first, steps):
        opt.apply(gradients(name, model, step, rank, world_size))


def numpy(t):
    return t.detach().float().numpy().copy() if t.dtype == torch.bfloat16 else t.detach().numpy().copy()


def continue_from(directory, rank, world_size, group=None):
    """A fresh model with the halfway weights and state from ``directory``, trained to the end."""
    model = make_model("mixed_dtypes")
    with torch.no_grad():
        for p, saved in zip(model.parameters(), torch.load(os.path.join(directory, "weights.pt"))):
            p.copy_(saved)
    opt = ShardedOptimizer(make_optimizer("mixed_dtypes"), process_group=group)
    opt.build(model.named_parameters())
    opt.load_sharded(directory)
    train("mixed_dtypes", model, opt, STEPS, rank, dist.get_world_size(group), first=HALFWAY)
    return {f"param{k}": numpy(p) for k, p in enumerate(model.parameters())}


def save_halfway(opt, model, directory, rank):
    opt.save_sharded(directory)
    if rank == 0:
        torch.save([p.detach().clone() for p in model.parameters()], os.path.join(directory, "weights.pt"))


def two_ranks(rank, world_size, port, out):
    distributed_launch.init(rank, world_size, port)
    try:
        results = {}
        for name in CONFIGS:
            model = make_model(name)
            opt = ShardedOptimizer(make_optimizer(name))
            opt.build(model.named_parameters())
            train(name, model, opt, HALFWAY, rank, world_size)
            if name == "mixed_dtypes":
                save_halfway(opt, model, f"{out}/from2", rank)
            train(name, model, opt, STEPS, rank, world_size, first=HALFWAY)
            results.update({f"{name}/param{k}": numpy(p) for k, p in enumerate(model.parameters())})
            full = opt.unsharded()
            keys = full.state_roles.keys()
            results.update({f"{name}/state/{keys[id(v)]}": numpy(v.value) for v in full.variables})

        # a one-rank group saves halfway (1 -> 2), then loads the two-rank checkpoint (2 -> 1)
        alone = dist.new_group([0])
        if rank == 0:
            model = make_model("mixed_dtypes")
            opt = ShardedOptimizer(make_optimizer("mixed_dtypes"), process_group=alone)
            opt.build(model.named_parameters())
            train("mixed_dtypes", model, opt, HALFWAY, 0, 1)
            save_halfway(opt, model, f"{out}/from1", 0)
            results.update({f"2to1/{k}": v for k, v in continue_from(f"{out}/from2", 0, 1, alone).items()})
        dist.barrier()
        results.update({f"1to2/{k}": v for k, v in continue_from(f"{out}/from1", rank, world_size).items()})

        # another model's checkpoint, and a checkpoint missing one rank's file: refused on every rank
        model = make_model("constraints")
        opt = ShardedOptimizer(make_optimizer("constraints"))
        opt.build(model.named_parameters())
        before = [v.value.clone() for v in opt.shard.variables]
        try:
            opt.load_sharded(f"{out}/from2")
        except ValueError as error:
            results["other_model"] = np.array(str(error))
        if rank == 0:
            os.makedirs(f"{out}/broken")
            for file in os.listdir(f"{out}/from2"):
                if not file.startswith("shard-") or "-00001-of-" not in file:
                    os.link(f"{out}/from2/{file}", f"{out}/broken/{file}")
        dist.barrier()
        model = make_model("mixed_dtypes")
        opt = ShardedOptimizer(make_optimizer("mixed_dtypes"))
        opt.build(model.named_parameters())
        before = [v.value.clone() for v in opt.shard.variables]
        try:
            opt.load_sharded(f"{out}/broken")
        except (FileNotFoundError, RuntimeError) as error:
            results["broken"] = np.array(f"{type(error).__name__}: {error}")
        results["broken_unchanged"] = np.array(all(torch.equal(a, v.value) for a, v in zip(before, opt.shard.variables)))
        np.savez(f"{out}/rank{rank}.npz", **results)
    finally:
        dist.destroy_process_group()


def four_ranks(rank, world_size, port, out):
    distributed_launch.init(rank, world_size, port)
    try:
        np.savez(f"{out}/2to4_rank{rank}.npz", **continue_from(f"{out}/from2", rank, world_size))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero1")
    distributed_launch.run(two_ranks, 2, str(out), timeout=60)
    return out


def load(path):
    return dict(np.load(path))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_feature_equals_one_process(out, name):
    params, expected = single_process(name)
    ranks = [load(out / f"rank{r}.npz") for r in range(2)]
    tolerance = dict(rtol=1e-5, atol=1e-6)
    for k, p in enumerate(params):
        for results in ranks:
            np.testing.assert_allclose(results[f"{name}/param{k}"], numpy(p), **tolerance, err_msg=f"param{k}")
    keys = expected.state_roles.keys()
    assert len(keys) == len(expected.variables)
    for v in expected.variables:
        key = keys[id(v)]
        np.testing.assert_allclose(ranks[0][f"{name}/state/{key}"], numpy(v.value), **tolerance, err_msg=key)


def test_the_features_did_something(out):
    results = load(out / "rank0.npz")
    np.testing.assert_allclose(np.linalg.norm(results["constraints/param0"], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(results["master_weights/param0"], axis=1), 1.0, rtol=1e-2)
    assert any(k.startswith("master_weights/state/") and k.endswith("/master") for k in results), sorted(results)
    untouched = numpy(list(make_model("constraints").parameters())[3])
    assert not np.allclose(results["constraints/param3"], untouched)  # the bias took its gradient


@pytest.mark.parametrize("how", ["1to2", "2to1"])
def test_checkpoint_loads_on_another_world_size(out, how):
    params, _ = single_process("mixed_dtypes")
    for r in range(2 if how == "1to2" else 1):
        results = load(out / f"rank{r}.npz")
        for k, p in enumerate(params):
            np.testing.assert_allclose(results[f"{how}/param{k}"], numpy(p), rtol=1e-5, atol=1e-6)


def test_checkpoint_loads_on_four_ranks(out):
    distributed_launch.run(four_ranks, 4, str(out), timeout=60)
    params, _ = single_process("mixed_dtypes")
    for r in range(4):
        results = load(out / f"2to4_rank{r}.npz")
        for k, p in enumerate(params):
            np.testing.assert_allclose(results[f"param{k}"], numpy(p), rtol=1e-5, atol=1e-6)


def test_each_rank_writes_only_its_own_part(out):
    names = sorted(os.listdir(out / "from2"))
    shards = [n for n in names if n.startswith("shard-")]
    assert len(shards) == 2 and "index.json" in names, names
    _, opt = single_process("mixed_dtypes")
    whole = sum(v.value.numel() for v in opt.variables if v.value.ndim > 0)
    for shard in shards:
        tensors, _ = polyak.saving.files.read(str(out / "from2" / shard))
        held = sum(t.size for t in tensors.values() if t.ndim > 0)
        assert held == whole // 2, (shard, held, whole)


def test_bad_checkpoints_are_refused_on_every_rank_and_change_nothing(out):
    ranks = [load(out / f"rank{r}.npz") for r in range(2)]
    for results in ranks:
        assert "is of other parameters. Nothing was loaded" in str(results["other_model"])
        assert bool(results["broken_unchanged"])
    assert str(ranks[1]["broken"]).startswith("FileNotFoundError"), str(ranks[1]["broken"])
    assert str(ranks[0]["broken"]).startswith("RuntimeError: Another rank could not read"), str(ranks[0]["broken"])
