"""polyak.torch.SGD: a torch.optim.Optimizer whose step is polyak.SGD's, compared with
polyak.SGD.apply on the same gradients, bit for bit."""

import copy
import io
import pickle
import subprocess
import sys

import pytest
import torch

import polyak
from polyak.core import clipping
from polyak.torch import SGD

SHAPES = [(3, 4), (4,), (2, 2)]


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def grads_for(step, params, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def run_face(opt, params, steps, start=0, grads=grads_for):
    for t in range(start, start + steps):
        for p, g in zip(params, grads(t, params)):
            p.grad = g.clone()
        opt.step()


def run_keras(opt, params, steps, start=0, grads=grads_for):
    for t in range(start, start + steps):
        opt.apply(grads(t, params), params)


def assert_same(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x.detach(), y.detach()), (x, y)


CONFIGS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True, weight_decay=0.05),
    dict(momentum=0.5, global_clipnorm=0.7),
    dict(momentum=0.9, clipnorm=0.5, use_ema=True, ema_overwrite_frequency=3),
    dict(momentum=0.9, gradient_accumulation_steps=2, clipvalue=0.3),
    dict(momentum=0.9, loss_scale_factor=4.0, skip_nonfinite=True),
]


def keras_kwargs(config, lr=0.05):
    return dict(config, learning_rate=lr)


@pytest.mark.parametrize("config", CONFIGS)
def test_one_group_equals_polyak_sgd_on_the_fused_tier(config):
    face_params, keras_params = make_params(), make_params()
    face = SGD(face_params, lr=0.05, **config)
    keras = polyak.SGD(**keras_kwargs(config))
    run_face(face, face_params, 6)
    run_keras(keras, keras_params, 6)
    assert_same(face_params, keras_params)
    assert face._last_tier == keras._last_tier == "cpu_fused"  # a guarded step too
    roles = keras.state_roles
    for i, p in enumerate(face_params):
        entry = face.state[p]
        assert int(entry["step"]) == int(roles.iteration.value) == 6
        for role, variables in roles.per_weight:
            assert torch.equal(entry[role], variables[i].value), role


def test_state_is_live_after_the_fused_tier_moves_it():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    run_face(opt, params, 1)
    first = opt.state[params[0]]["momentum"].clone()
    run_face(opt, params, 1, start=1)
    assert opt._last_tier == "cpu_fused"
    assert not torch.equal(opt.state[params[0]]["momentum"], first)
    assert torch.equal(opt.state_dict()["state"][0]["momentum"], opt.state[params[0]]["momentum"])


def test_named_parameters_name_the_variables_and_exclude_from_decay_by_name():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    reference = copy.deepcopy(model)
    opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["bias"])
    keras = polyak.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.1)
    keras.exclude_from_weight_decay(var_list=[p for n, p in reference.named_parameters() if "bias" in n])
    for t in range(3):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(t))
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()
        reference(x).sum().backward()
        keras.apply([p.grad for p in reference.parameters()], list(reference.parameters()))
        reference.zero_grad()
    assert_same(model.parameters(), reference.parameters())
    names = [v.name for v in opt._internal.variables]
    assert "0.weight_momentum" in names and "1.bias_momentum" in names
    assert opt.state_dict()["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("config", [dict(), dict(gradient_accumulation_steps=2, use_ema=True)])
def test_groups_with_their_own_hyperparameters_equal_one_polyak_sgd_each(config):
    face_params, a, b = make_params(), make_params(), make_params()
    face = SGD([{"params": face_params[:2], "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
                {"params": face_params[2:], "momentum": 0.5, "nesterov": True}], lr=0.03, **config)
    first = polyak.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01, **config)
    second = polyak.SGD(learning_rate=0.03, momentum=0.5, nesterov=True, **config)
    run_face(face, face_params, 5)
    for t in range(5):
        first.apply(grads_for(t, a)[:2], a[:2])
        second.apply(grads_for(t, b)[2:], b[2:])
    assert_same(face_params, a[:2] + b[2:])
    assert face._last_tier == "reference"


def test_global_clipping_and_the_counter_span_every_group():
    face_params, a, b = make_params(), make_params(), make_params()
    face = SGD([{"params": face_params[:1], "lr": 0.2}, {"params": face_params[1:], "momentum": 0.9}],
               lr=0.05, global_clipnorm=0.5)
    first, second = polyak.SGD(learning_rate=0.2), polyak.SGD(learning_rate=0.05, momentum=0.9)

    def clipped(t, params):
        import array_api_compat.torch as xp
        return clipping.clip_gradients(xp, grads_for(t, params), global_clipnorm=0.5)

    run_face(face, face_params, 4)
    for t in range(4):
        first.apply(clipped(t, a)[:1], a[:1])
        second.apply(clipped(t, b)[1:], b[1:])
    assert_same(face_params, a[:1] + b[1:])
    assert int(face.state[face_params[0]]["step"]) == 4


def test_groups_that_differ_only_by_decay_exclusion_run_fused():
    face_params, keras_params = make_params(), make_params()
    face = SGD([{"params": face_params[:2]}, {"params": face_params[2:], "weight_decay": 0.0}],
               lr=0.1, momentum=0.9, weight_decay=0.05)
    keras = polyak.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05)
    keras.exclude_from_weight_decay(var_list=keras_params[2:])
    run_face(face, face_params, 4)
    run_keras(keras, keras_params, 4)
    assert_same(face_params, keras_params)
    assert face._last_tier == "cpu_fused"


def test_lr_is_read_at_every_step_and_the_velocity_keeps_past_rates():
    face_params, keras_params = make_params(), make_params()
    face = SGD(face_params, lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(face, T_max=5)
    keras = polyak.SGD(learning_rate=0.1, momentum=0.9)
    for t in range(5):
        keras.learning_rate = face.param_groups[0]["lr"]
        run_keras(keras, keras_params, 1, start=t)
        run_face(face, face_params, 1, start=t)
        scheduler.step()
    assert_same(face_params, keras_params)
    assert face.param_groups[0]["initial_lr"] == 0.1


def test_a_polyak_schedule_as_lr_reports_its_value_in_the_group():
    schedule = polyak.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    face_params, keras_params = make_params(), make_params()
    face = SGD(face_params, lr=schedule, momentum=0.9)
    assert face.param_groups[0]["lr"] == pytest.approx(0.1)
    keras = polyak.SGD(learning_rate=schedule, momentum=0.9)
    run_face(face, face_params, 4)
    run_keras(keras, keras_params, 4)
    assert_same(face_params, keras_params)
    assert face.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)


def test_closure_zero_grad_and_hooks():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = SGD([w], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        assert torch.is_grad_enabled()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.item() == 5.0 and calls == ["pre", "post"]
    assert torch.equal(w.detach(), torch.tensor([0.8, -1.6]))
    opt.zero_grad()
    assert w.grad is None


def test_parameters_without_gradient_are_left_alone():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)
    before = params[1].detach().clone()
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert torch.equal(params[1].detach(), before)
    assert opt._last_tier == "reference"


def test_add_param_group_after_steps_keeps_the_others_state_and_momentum_can_be_turned_on():
    params = make_params()
    opt = SGD(params[:2], lr=0.1)
    run_face(opt, params[:2], 2)
    opt.param_groups[0]["momentum"] = 0.9
    run_face(opt, params[:2], 1, start=2)
    velocity = opt.state[params[0]]["momentum"].clone()
    opt.add_param_group({"params": params[2:], "lr": 0.01})
    assert torch.equal(opt.state[params[0]]["momentum"], velocity)
    assert int(opt.state[params[2]]["step"]) == 3
    run_face(opt, params, 1, start=3)


@pytest.mark.parametrize("config", [dict(momentum=0.9, use_ema=True, gradient_accumulation_steps=3),
                                    dict(momentum=0.9, skip_nonfinite=True, clipnorm=1.0)])
def test_state_dict_round_trips_through_torch_load_and_continues_the_same_trajectory(config):
    straight, first = make_params(), make_params()
    opt = SGD([{"params": straight[:2]}, {"params": straight[2:], "lr": 0.2}], lr=0.05, **config)
    run_face(opt, straight, 7)
    saved_opt = SGD([{"params": first[:2]}, {"params": first[2:], "lr": 0.2}], lr=0.05, **config)
    run_face(saved_opt, first, 4)
    buffer = io.BytesIO()
    torch.save({"opt": saved_opt.state_dict(), "params": [p.detach() for p in first]}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p.clone()) for p in loaded["params"]]
    fresh = SGD([{"params": resumed[:2]}, {"params": resumed[2:], "lr": 0.9}], lr=0.05, **config)
    fresh.load_state_dict(loaded["opt"])
    assert fresh.param_groups[1]["lr"] == 0.2
    for i, p in enumerate(resumed):
        for key, value in saved_opt.state[first[i]].items():
            assert torch.equal(fresh.state[p][key], value)
    run_face(fresh, resumed, 3, start=4)
    assert_same(resumed, straight)


def test_deepcopy_and_pickle_continue_the_same_trajectory():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9, use_ema=True)
    run_face(opt, params, 2)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        clone_params = clone.param_groups[0]["params"]
        assert all(c is not p for c, p in zip(clone_params, params))
        run_face(clone, clone_params, 2, start=2)
        expected = make_params()
        keras = polyak.SGD(learning_rate=0.1, momentum=0.9, use_ema=True)
        run_keras(keras, expected, 4)
        assert_same(clone_params, expected)


def test_bad_input_names_the_group_or_parameter_and_changes_nothing():
    params = make_params()
    with pytest.raises(ValueError, match=r"Param group 1 has unknown key\(s\) \['betas'\]"):
        SGD([{"params": params[:1]}, {"params": params[1:], "betas": (0.9, 0.99)}])
    with pytest.raises(ValueError, match="non-leaf"):
        SGD([params[0] * 2])
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": params[:2]}, {"params": params[1:]}])
    with pytest.raises(ValueError, match=r"^`momentum` must be a float between \[0, 1\]. Received: momentum=1.5$"):
        SGD(params, momentum=1.5)  # a keyword is named as it was typed, as polyak.SGD names it
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['momentum'\]` must be a float between \[0, 1\]"):
        SGD([{"params": params[:1]}, {"params": params[1:], "momentum": 1.5}])
    with pytest.raises(ValueError, match="`ema_momentum` must be <= 1. Received: ema_momentum=1.5"):
        SGD(params, ema_momentum=1.5)
    opt = SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, momentum=0.9)
    run_face(opt, params, 2)
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict())
    for bad in (-0.1, float("nan"), float("inf")):
        opt.param_groups[1]["lr"] = bad
        with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\]"):
            opt.step()
    opt.param_groups[1]["lr"] = 0.1
    assert_same(params, before)
    other = SGD(make_params()[:2], lr=0.1, momentum=0.9)
    run_face(other, other.param_groups[0]["params"], 1)
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(other.state_dict())
    shapes = copy.deepcopy(state)
    shapes["state"][0]["momentum"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"'momentum' of parameter 'params\[0\]' has shape \(5,\)"):
        opt.load_state_dict(shapes)
    ema = SGD([{"params": make_params()[:2]}, {"params": make_params()[2:]}], lr=0.1, momentum=0.9, use_ema=True)
    with pytest.raises(ValueError, match="holds \\['momentum', 'step'\\]"):
        ema.load_state_dict(state)
    assert_same(params, before)
    after = opt.state_dict()
    for i in state["state"]:
        for key in state["state"][i]:
            assert torch.equal(after["state"][i][key], state["state"][i][key])


def test_grad_scaler_skips_inf_steps_and_clip_grad_norm_applies():
    params = make_params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    loss = sum((p ** 2).sum() for p in params)
    scaler.scale(loss).backward()
    params[0].grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in params]
    scaler.step(opt)
    scaler.update()
    assert_same(params, before)
    assert len(opt.state) == 0
    opt.zero_grad()
    keras_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    keras = polyak.SGD(learning_rate=0.1, momentum=0.9)
    scaler.scale(sum((p ** 2).sum() for p in params)).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(opt)
    sum((p ** 2).sum() for p in keras_params).backward()
    torch.nn.utils.clip_grad_norm_(keras_params, 1.0)
    keras.apply([p.grad for p in keras_params], keras_params)
    assert_same(params, keras_params)


def test_import_polyak_does_not_import_torch():
    code = "import sys, polyak; assert polyak.__file__.startswith(sys.argv[1]); print('torch' in sys.modules)"
    import pathlib
    root = str(pathlib.Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "False"
