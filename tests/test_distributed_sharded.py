"""``ShardedOptimizer`` on 2 gloo processes equals one process training on the full batch.

Each rank computes gradients on its half of the batch; the sharded optimizer averages them (the
full-batch gradient of the mean loss), steps its half of the flattened state and gathers the
parameters. The test compares parameters and the unsharded state with a plain optimizer on one
process, checks the per-rank state is half the unsharded state, round-trips a checkpoint, and
checks the bad-input errors.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import distributed_launch  # noqa: E402
import polyak  # noqa: E402
from polyak.distributed import ShardedOptimizer  # noqa: E402

STEPS = 6
BATCH = 8
WORLD = 2
CONFIGS = {
    "global_clipnorm": dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.05, global_clipnorm=0.3,
                            use_ema=True, ema_momentum=0.8, gradient_accumulation_steps=2),
    "clipnorm": dict(learning_rate=0.1, momentum=0.5, clipnorm=0.2, skip_nonfinite=True, weight_decay=0.01),
}
NAN_STEP = 3  # with skip_nonfinite, rank 1's gradient is poisoned on this step: every rank skips it
#: with skip_nonfinite, a finite gradient on this step whose clipping norm overflows in float32
#: (the mean over the ranks is 4e19, its square inf): every rank skips it too
OVERFLOW_STEP = 4


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))  # 58 elements


def make_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 4, generator=generator)
    return x, torch.cat([x.sum(dim=1, keepdim=True).sin(), x[:, :1]], dim=1)


def make_optimizer(name, params):
    opt = polyak.SGD(**CONFIGS[name])
    opt.exclude_from_weight_decay(var_list=[p for p in params if p.ndim == 1])
    return opt


def gradients(model, x, y):
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def poison(name, step, grads, rank):
    if "skip_nonfinite" in CONFIGS[name] and step == NAN_STEP and rank == 1:
        grads[0][0, 0] = float("nan")
    if "skip_nonfinite" in CONFIGS[name] and step == OVERFLOW_STEP:
        grads[0][0, 1] = 4e19
    return grads


def single_process(name):
    model = make_model()
    params = list(model.parameters())
    opt = make_optimizer(name, params)
    x, y = make_data()
    for step in range(STEPS):
        opt.apply(poison(name, step, gradients(model, x, y), 1), params)
    return params, opt


def sharded_worker(rank, world_size, port, out_dir):
    distributed_launch.init(rank, world_size, port)
    try:
        x, y = make_data()
        half = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
        results = {}
        for name in CONFIGS:
            model = make_model()
            params = list(model.parameters())
            opt = ShardedOptimizer(make_optimizer(name, params))
            opt.build(params)
            for step in range(STEPS):
                opt.apply(poison(name, step, gradients(model, x[half], y[half]), rank))
            path = f"{out_dir}/{name}.safetensors"
            opt.save(path)
            for k, p in enumerate(params):
                results[f"{name}/param{k}"] = p.detach().numpy().copy()
            results[f"{name}/state_bytes"] = np.array(opt.state_bytes())

            # a fresh sharded optimizer restored from the checkpoint continues exactly like this one
            restored = ShardedOptimizer(make_optimizer(name, params))
            restored.build(params)
            restored.load(path)
            for mine, theirs in zip(opt.shard.variables, restored.shard.variables):
                assert torch.equal(torch.as_tensor(mine.numpy()), torch.as_tensor(theirs.numpy())), mine.path

        # a checkpoint from a different model is refused on every rank
        other = list(torch.nn.Linear(4, 2).parameters())
        wrong = ShardedOptimizer(make_optimizer("clipnorm", other))
        wrong.build(other)
        try:
            wrong.load(f"{out_dir}/clipnorm.safetensors")
        except Exception as error:  # noqa: BLE001 - the test checks the type by name
            results["wrong_checkpoint"] = np.array(f"{type(error).__name__}: {error}")

        # ranks building on different parameter lists fail on every rank, without hanging
        model = make_model()
        params = list(model.parameters()) if rank == 0 else list(model.parameters())[:-1]
        try:
            ShardedOptimizer(polyak.SGD(0.1)).build(params)
        except ValueError as error:
            results["mismatch"] = np.array(str(error))
        np.savez(f"{out_dir}/rank{rank}.npz", **results)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    distributed_launch.run(sharded_worker, WORLD, str(out), timeout=60)
    return out, [dict(np.load(out / f"rank{r}.npz")) for r in range(WORLD)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sharded_equals_single_process(ranks, name):
    _, results = ranks
    params, _ = single_process(name)
    for k, p in enumerate(params):
        for r in range(WORLD):
            np.testing.assert_allclose(results[r][f"{name}/param{k}"], p.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(results[0][f"{name}/param{k}"], results[1][f"{name}/param{k}"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_checkpoint_is_the_unsharded_state(ranks, name):
    out, _ = ranks
    params, expected = single_process(name)
    loaded = make_optimizer(name, params)
    loaded.build(params)
    polyak.load(out / f"{name}.safetensors", loaded)
    assert [v.name for v in loaded.variables] == [v.name for v in expected.variables]
    for got, want in zip(loaded.variables, expected.variables):
        np.testing.assert_allclose(np.asarray(got.numpy()), np.asarray(want.numpy()), rtol=1e-5, atol=1e-6,
                                   err_msg=got.path)
    if "skip_nonfinite" in CONFIGS[name]:
        assert int(loaded.skipped_steps.numpy()) == 2  # NAN_STEP and OVERFLOW_STEP


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_memory_per_rank_is_one_over_world_size(ranks, name):
    _, results = ranks
    _, plain = single_process(name)
    unsharded = sum(v.value.numel() * v.value.element_size() for v in plain.variables if v.value.ndim > 0)
    for r in range(WORLD):
        assert int(results[r][f"{name}/state_bytes"]) * WORLD == unsharded


def test_different_parameter_lists_fail_on_every_rank(ranks):
    _, results = ranks
    for r in range(WORLD):
        assert "different parameter lists" in str(results[r]["mismatch"])


def test_checkpoint_of_another_model_is_refused_on_every_rank(ranks):
    _, results = ranks
    for r in range(WORLD):
        message = str(results[r]["wrong_checkpoint"])
        assert message.startswith("CheckpointMismatchError") and "Nothing was loaded" in message, message


def test_needs_an_initialised_process_group():
    with pytest.raises(ValueError, match="initialised process group.*Received: process_group=None"):
        ShardedOptimizer(polyak.SGD(0.1))
