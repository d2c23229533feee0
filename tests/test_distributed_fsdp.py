"""polyak on FSDP2 (``fully_shard``: DTensor parameters) and with ``torch.distributed.checkpoint``,
on 2 gloo processes over loopback, each run bounded in time.

FSDP2 averages the ranks' half-batch gradients into sharded gradients (the gradient of the mean
loss over the full batch); each rank steps its shards with sharded state. The ranks' full
parameters equal a single process trained on the full batch (to float32 rounding), for every
feature: clipping by norms over the full tensors, decay exclusions, EMA, accumulation, loss
scaling, master weights.
"""

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytest.importorskip("torch.distributed.fsdp")

import distributed_launch  # noqa: E402
import polyak  # noqa: E402
from polyak.torch import SGD as TorchSGD  # noqa: E402

STEPS = 4
BATCH = 8
CASES = {
    "nesterov_decay_global_clipnorm_ema": dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.05,
                                               global_clipnorm=0.3, use_ema=True, ema_momentum=0.8),
    "clipnorm": dict(learning_rate=0.1, momentum=0.9, clipnorm=0.2),
    "accumulation_loss_scale_ema_overwrite": dict(learning_rate=0.1, momentum=0.5, gradient_accumulation_steps=2,
                                                  loss_scale_factor=128.0, use_ema=True, ema_overwrite_frequency=2),
}
FACES = ("polyak.SGD", "polyak.torch.SGD")


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)


def make_data():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 4, generator=generator)
    return x, torch.cat([x.sum(dim=1, keepdim=True).sin(), x[:, :1]], dim=1)


def make_optimizer(face, model, config):
    """The optimizer, biases spared decay: by tensor for polyak.SGD, by name for the torch face."""
    if face == "polyak.SGD":
        opt = polyak.SGD(**config)
        opt.exclude_from_weight_decay(var_list=[model[0].bias, model[2].bias])
        return opt
    config = dict(config)
    opt = TorchSGD(model.named_parameters(), lr=config.pop("learning_rate"), **config)
    opt.exclude_from_weight_decay(var_names=["bias"])
    return opt


def train(face, model, x, y, config, steps=STEPS, opt=None):
    """``steps`` steps on ``model`` (the wrapped model under DDP: its forward syncs gradients)."""
    opt = opt or make_optimizer(face, model, config)
    params = list(model.parameters())
    for _ in range(steps):
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if config.get("loss_scale_factor"):
            loss = loss * config["loss_scale_factor"]
        loss.backward()
        if face == "polyak.SGD":
            opt.apply([p.grad for p in params], params)
        else:
            opt.step()
    return opt


def inner(opt):
    return opt if isinstance(opt, polyak.SGD) else opt._internal


def shard(model):
    from torch.distributed.fsdp import fully_shard

    fully_shard(model[0])
    fully_shard(model[2])
    return fully_shard(model)


def half(rank, world_size, *tensors):
    part = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    return [t[part] for t in tensors]


def full_values(model):
    return [p.detach().full_tensor().numpy() for p in model.parameters()]


def master_weight_grads(model, step):
    """bf16 gradients fixed per step, the same full tensor on every rank."""
    generator = torch.Generator().manual_seed(10 + step)
    return [torch.randn(p.shape, generator=generator).to(torch.bfloat16) for p in model.parameters()]


MASTER_CONFIG = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.01, global_clipnorm=1.0, use_ema=True,
                     master_weights=True)


def train_master_weights(model, distribute):
    opt = polyak.SGD(**MASTER_CONFIG)
    params = list(model.parameters())
    for step in range(STEPS):
        grads = [distribute(g, p) for g, p in zip(master_weight_grads(model, step), params)]
        opt.apply(grads, params)
    return opt


def features_worker(rank, world_size, port, out_dir):
    distributed_launch.init(rank, world_size, port)
    try:
        from torch.distributed.tensor import distribute_tensor

        results = {}
        for face in FACES:
            for name, config in CASES.items():
                model = shard(make_model())
                opt = inner(train(face, model, *half(rank, world_size, *make_data()), config))
                momentum = opt.momentums[0].value
                results[face, name] = dict(values=full_values(model), tier=opt._last_tier,
                                           momentum=(type(momentum).__name__, tuple(momentum.to_local().shape),
                                                     tuple(momentum.shape)))
        model = shard(make_model(torch.bfloat16))
        opt = train_master_weights(model, lambda g, p: distribute_tensor(g, p.device_mesh, p.placements))
        masters = [m.value for m in opt.state_roles.role("master")]
        results["master_weights"] = dict(
            values=[p.detach().full_tensor().float().numpy() for p in model.parameters()],
            masters=[m.full_tensor().numpy() for m in masters], tier=opt._last_tier,
            momentum=(type(masters[0]).__name__, tuple(masters[0].to_local().shape), tuple(masters[0].shape)))
        with open(f"{out_dir}/rank{rank}.pkl", "wb") as f:
            pickle.dump(results, f)
        dist.barrier()  # no rank tears the group down while its peer still uses it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    distributed_launch.run(features_worker, 2, str(out), timeout=60)
    ranks = []
    for r in range(2):
        with open(out / f"rank{r}.pkl", "rb") as f:
            ranks.append(pickle.load(f))
    return ranks


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("name", list(CASES))
def test_fsdp2_equals_single_process_full_batch(fsdp_results, face, name):
    config = CASES[name]
    model = make_model()
    train(face, model, *make_data(), config)
    expected = [p.detach().numpy() for p in model.parameters()]
    for rank in fsdp_results:
        got = rank[face, name]
        assert got["tier"] == "foreach"  # DTensors take the foreach tier (no fused kernel, no crash)
        assert got["momentum"] == ("DTensor", (4, 4), (8, 4))  # the state is sharded: half the rows here
        for g, want in zip(got["values"], expected):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    unclipped = make_model()
    train(face, unclipped, *make_data(), {k: v for k, v in config.items() if "clipnorm" not in k})
    if "clipnorm" in name:  # clipping bites: the norms were over the full tensors, not each shard's
        assert any(np.abs(p.detach().numpy() - w).max() > 1e-3 for p, w in zip(unclipped.parameters(), expected))


def test_fsdp2_master_weights_equal_single_process(fsdp_results):
    model = make_model(torch.bfloat16)
    opt = train_master_weights(model, lambda g, p: g)
    expected = [p.detach().float().numpy() for p in model.parameters()]
    masters = [m.value.numpy() for m in opt.state_roles.role("master")]
    for rank in fsdp_results:
        got = rank["master_weights"]
        assert got["tier"] == "reference"  # bf16 weights with float32 masters: no fused tier
        assert got["momentum"] == ("DTensor", (4, 4), (8, 4))  # the float32 masters are sharded too
        for g, want in zip(got["masters"], masters):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
        for g, want in zip(got["values"], expected):
            np.testing.assert_array_equal(g, want)  # the bf16 weights are the masters rounded


# --- torch.distributed.checkpoint --------------------------------------------------------------
DCP_CONFIG = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.05, global_clipnorm=0.3,
                  use_ema=True, ema_momentum=0.8, gradient_accumulation_steps=2)
BEFORE, AFTER = 3, 3  #: steps before the checkpoint (mid accumulation cycle) and after


def dcp_state(model, opt):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def dcp_restore(model, opt, path):
    """A fresh model and optimizer loaded from the checkpoint at ``path``, DCP's way."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = dcp_state(model, opt)
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


def wrapped(kind, model):
    if kind == "fsdp2":
        return shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def unwrapped(model):
    return getattr(model, "module", model)


def save_train_restore_train(rank, world_size, out_dir, kind):
    """Train, save with DCP, restore into a fresh model and optimizer, train on; on ``kind``."""
    import torch.distributed.checkpoint as dcp

    x, y = half(rank, world_size, *make_data())
    model = wrapped(kind, make_model())
    opt = train("polyak.torch.SGD", model, x, y, DCP_CONFIG, steps=BEFORE,
                opt=make_optimizer("polyak.torch.SGD", unwrapped(model), DCP_CONFIG))
    momentum = opt.state[next(model.parameters())]["momentum"]
    dcp.save(dcp_state(model, opt), checkpoint_id=f"{out_dir}/checkpoint")

    torch.manual_seed(5)  # other initial weights: only the checkpoint can make the runs agree
    fresh = wrapped(kind, torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)))
    opt = make_optimizer("polyak.torch.SGD", unwrapped(fresh), DCP_CONFIG)
    dcp_restore(fresh, opt, f"{out_dir}/checkpoint")
    train("polyak.torch.SGD", fresh, x, y, DCP_CONFIG, steps=AFTER, opt=opt)
    values = full_values(fresh) if kind == "fsdp2" else [p.detach().numpy() for p in fresh.parameters()]
    with open(f"{out_dir}/rank{rank}.pkl", "wb") as f:
        pickle.dump(dict(values=values, momentum_type=type(momentum).__name__,
                         momentum_local=tuple((momentum.to_local() if kind == "fsdp2" else momentum).shape)), f)


def dcp_worker(rank, world_size, port, out_dir):
    distributed_launch.init(rank, world_size, port)
    try:
        for kind in ("fsdp2", "ddp"):
            os.makedirs(f"{out_dir}/{kind}", exist_ok=True)
            save_train_restore_train(rank, world_size, f"{out_dir}/{kind}", kind)
        dist.barrier()  # no rank tears the group down while its peer still uses it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dcp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dcp")
    distributed_launch.run(dcp_worker, 2, str(out), timeout=60)
    return out


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # the 1-process load, meant
@pytest.mark.parametrize("kind", ["fsdp2", "ddp"])
def test_dcp_saved_on_2_ranks_resumes_on_2_and_on_1(dcp_runs, kind):
    tmp_path = dcp_runs / kind

    model = make_model()  # the uninterrupted run on one process
    train("polyak.torch.SGD", model, *make_data(), DCP_CONFIG, steps=BEFORE + AFTER)
    expected = [p.detach().numpy() for p in model.parameters()]
    for r in range(2):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            got = pickle.load(f)
        assert (got["momentum_type"], got["momentum_local"]) == (
            ("DTensor", (4, 4)) if kind == "fsdp2" else ("Tensor", (8, 4)))
        for g, want in zip(got["values"], expected):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)

    torch.manual_seed(5)  # one process, no process group, loads the 2 ranks' checkpoint
    single = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = make_optimizer("polyak.torch.SGD", single, DCP_CONFIG)
    dcp_restore(single, opt, str(tmp_path / "checkpoint"))
    assert int(opt.state[single[0].weight]["step"]) == BEFORE
    train("polyak.torch.SGD", single, *make_data(), DCP_CONFIG, steps=AFTER, opt=opt)
    for p, want in zip(single.parameters(), expected):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-5, atol=1e-6)
