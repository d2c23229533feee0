"""polyak.torch.SGD with polyak's own checkpoints, torch.distributed.checkpoint, torch.compile,
autocast and Hugging Face's ``optimizer_cls_and_kwargs``: each equals polyak.SGD.apply on the
same gradients and resumes to an uninterrupted run's numbers, bit for bit."""

import copy
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import state_dict as dcp_state

import polyak
from polyak.saving import CheckpointMismatchError, files
from polyak.torch import SGD

CONFIG = dict(lr=0.05, momentum=0.9, weight_decay=0.01, use_ema=True, gradient_accumulation_steps=2)


def model_for(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def set_grads(model, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        set_grads(model, t)
        opt.step()
        opt.zero_grad()


def keras_run(model, steps, **config):
    lr = config.pop("lr")
    keras = polyak.SGD(learning_rate=lr, **config)
    params = list(model.parameters())
    for t in range(steps):
        set_grads(model, t)
        keras.apply([p.grad for p in params], params)
    return params


def assert_same(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.detach(), y.detach()), (x, y)


def straight_run(steps=7):
    model = model_for()
    train(model, SGD(model.named_parameters(), **CONFIG), steps)
    return model


# --- polyak.save / polyak.load ---------------------------------------------------------------
def test_polyak_save_and_load_continue_the_same_trajectory(tmp_path):
    straight = straight_run()
    first = model_for()
    opt = SGD(first.named_parameters(), **CONFIG)
    train(first, opt, 4)
    polyak.save(tmp_path / "opt.safetensors", opt, variables=list(first.parameters()))
    resumed = model_for(seed=1)
    fresh = SGD(resumed.named_parameters(), **CONFIG)
    assert polyak.load(tmp_path / "opt.safetensors", fresh, variables=list(resumed.parameters())) is fresh
    assert_same(resumed.parameters(), first.parameters())
    for p, q in zip(first.parameters(), resumed.parameters()):
        assert opt.state[p].keys() == fresh.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(fresh.state[q][key], value), key
    train(resumed, fresh, 3, start=4)
    assert_same(resumed.parameters(), straight.parameters())
    assert_same(straight.parameters(), keras_run(model_for(), 7, **CONFIG))


def test_polyak_checkpoint_keys_are_the_parameters_names_and_a_mismatch_changes_nothing(tmp_path):
    model = model_for()
    opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    train(model, opt, 2)
    polyak.save(tmp_path / "opt.safetensors", opt)
    tensors, _ = files.read(str(tmp_path / "opt.safetensors"))
    assert {"optimizer/iteration", "optimizer/0.weight/momentum", "optimizer/2.bias/momentum"} <= set(tensors)
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    fresh = SGD(other.named_parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointMismatchError, match="2.weight/momentum"):
        polyak.load(tmp_path / "opt.safetensors", fresh)
    assert len(fresh.state) == 0 and fresh.state[next(other.parameters())] == {}
    with pytest.raises(TypeError, match="a polyak Optimizer or polyak.torch.SGD"):
        polyak.save(tmp_path / "x.safetensors", torch.optim.SGD(model.parameters(), lr=0.1))


# --- torch.distributed.checkpoint ------------------------------------------------------------
def test_dcp_state_initialisation_changes_nothing_not_even_the_iteration():
    model = model_for()
    opt = SGD(model.named_parameters(), **CONFIG)
    before = [p.detach().clone() for p in model.parameters()]
    saved = dcp_state.get_optimizer_state_dict(model, opt)
    assert_same(model.parameters(), before)
    assert all(p.grad is None for p in model.parameters())
    assert opt.param_groups[0]["lr"] == CONFIG["lr"]
    assert set(saved["state"]) == {name for name, _ in model.named_parameters()}
    assert int(opt.state[model[0].weight]["step"]) == 0
    assert not opt.state[model[0].weight]["momentum"].any()
    train(model, opt, 5)
    assert_same(model.parameters(), keras_run(model_for(), 5, **CONFIG))


def test_dcp_save_and_load_continue_the_same_trajectory(tmp_path):
    straight = straight_run()
    first = model_for()
    opt = SGD(first.named_parameters(), **CONFIG)
    train(first, opt, 4)
    model_state, optim_state = dcp_state.get_state_dict(first, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp_path))

    resumed = model_for(seed=1)
    fresh = SGD(resumed.named_parameters(), **CONFIG)
    model_state, optim_state = dcp_state.get_state_dict(resumed, fresh)
    target = {"model": model_state, "optim": optim_state}
    dcp.load(target, checkpoint_id=str(tmp_path))
    dcp_state.set_state_dict(resumed, fresh, model_state_dict=target["model"], optim_state_dict=target["optim"])
    assert int(fresh.state[resumed[0].weight]["step"]) == 4
    train(resumed, fresh, 3, start=4)
    assert_same(resumed.parameters(), straight.parameters())


def test_dcp_flattened_state_dict_round_trips():
    straight = straight_run()
    first = model_for()
    opt = SGD(first.named_parameters(), **CONFIG)
    train(first, opt, 4)
    options = dcp_state.StateDictOptions(flatten_optimizer_state_dict=True)
    flat = copy.deepcopy(dcp_state.get_optimizer_state_dict(first, opt, options=options))
    assert "state.0.weight.momentum" in flat
    resumed = model_for(seed=1)
    resumed.load_state_dict(first.state_dict())
    fresh = SGD(resumed.named_parameters(), **CONFIG)
    dcp_state.set_optimizer_state_dict(resumed, fresh, flat, options=options)
    train(resumed, fresh, 3, start=4)
    assert_same(resumed.parameters(), straight.parameters())


# --- torch.compile and autocast ----------------------------------------------------------------
X = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))


def record_gradients(opt):
    """The gradients every step of ``opt`` took, as it saw them."""
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([p.grad.detach().clone() for p in o._params()]))
    return seen


def replay(gradients, **config):
    model = model_for()
    lr = config.pop("lr")
    keras, params = polyak.SGD(learning_rate=lr, **config), list(model.parameters())
    for grads in gradients:
        keras.apply(grads, params)
    return params


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bfloat16-autocast"])
def test_compiled_training_step_equals_polyak_sgd_on_its_gradients(autocast):
    torch._dynamo.reset()
    model = model_for()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    gradients = record_gradients(opt)

    @torch.compile
    def training_step(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            training_step(X)
    assert len(gradients) == 3 and opt._last_tier == "cpu_fused"
    assert all(g.dtype == torch.float32 for g in gradients[0])
    assert_same(model.parameters(), replay(gradients, lr=0.1, momentum=0.9, nesterov=True))


def test_autocast_forward_and_a_step_inside_autocast_equal_polyak_sgd_on_the_same_gradients():
    model = model_for()
    opt = SGD(model.parameters(), **CONFIG)
    gradients = record_gradients(opt)
    for step in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (model(X) ** 2).mean()
            assert loss.dtype == torch.bfloat16
            loss.backward()
            if step % 2:
                opt.step()
        if not step % 2:
            opt.step()
        opt.zero_grad()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_same(model.parameters(), replay(gradients, **CONFIG))
