"""Resume: N steps, save, a fresh process loads and takes M more, and every array equals N + M
steps in one go, bit for bit; with everything that shapes the next step: the torch face's
groups as its schedulers left them (StepLR, OneCycleLR moving the momentum too), weight-decay
exclusions (by variable and by name, through ``polyak.load(path, variables=...)``), EMA and
accumulation mid-cycle, a LossScaleOptimizer's scale. And what a resume refuses."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import polyak
import polyak.torch
import resume_run
import training
from polyak.saving import CheckpointMismatchError, CheckpointMismatchWarning, exclusions, files

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
N, TOTAL = 8, 14  #: 8 calls stop mid accumulation cycle (of 3), between EMA overwrites, after a NaN step


def _fresh_process(*arguments):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), TESTS,
                                                         os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, os.path.join(TESTS, "resume_run.py"), *map(str, arguments)], check=True,
                   env=env, timeout=120)


def _assert_same_file(resumed_path, expected_path):
    resumed, resumed_meta = files.read(str(resumed_path))
    expected, expected_meta = files.read(str(expected_path))
    assert sorted(resumed) == sorted(expected)
    for key in expected:
        assert resumed[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
    assert json.loads(resumed_meta["config"]) == json.loads(expected_meta["config"])  # the groups' rates too
    assert resumed_meta[exclusions.FIELD] == expected_meta[exclusions.FIELD]
    return expected, json.loads(expected_meta[exclusions.FIELD])


# --- polyak.SGD, recreated by polyak.load(path, variables=...) ---------------------------------------
@pytest.mark.parametrize("case", ["var_list", "var_names", "loss_scale"])
def test_a_recreated_optimizer_resumes_in_a_fresh_process_bit_for_bit(tmp_path, case):
    optimizer, weights = resume_run.keras_run(case)
    training.train(optimizer, weights, 0, N)
    polyak.save(tmp_path / "at_start.ckpt", optimizer, weights)
    at_n, _ = files.read(str(tmp_path / "at_start.ckpt"))
    training.train(optimizer, weights, N, TOTAL)
    polyak.save(tmp_path / "uninterrupted.ckpt", optimizer, weights)

    _fresh_process("keras", case, "polyak", tmp_path, N, TOTAL)
    expected, excluded = _assert_same_file(tmp_path / "resumed.ckpt", tmp_path / "uninterrupted.ckpt")
    assert tuple(np.load(tmp_path / "resumed_decay_mask.npy")) == (True, False, True)
    assert excluded == ({"var_list": ["dense_bias"], "var_names_pattern": None} if case == "var_list"
                        else {"var_list": [], "var_names_pattern": "bias"})
    assert int(at_n["optimizer/iteration"]) % 3 != 0  # mid accumulation cycle
    assert np.any(at_n["optimizer/dense_bias/gradient_accumulator"] != 0)
    if case == "loss_scale":  # 1024, doubled after 4 finite steps, halved at the NaN step 4, 3 steps since
        assert (float(at_n["optimizer/loss_scale/dynamic_scale"]), int(at_n["optimizer/loss_scale/step_counter"])) \
            == (1024.0, 3)
        assert float(expected["optimizer/loss_scale/dynamic_scale"]) == 2048.0  # doubled at 8, halved at 9, ...


def test_without_its_exclusions_the_run_would_decay_the_biases(tmp_path):
    """The check above has teeth: a bias excluded or not gives a different trajectory."""
    with_exclusion, weights = resume_run.keras_run("var_names")
    without, same_weights = resume_run.keras_run("var_names", exclude=False)
    training.train(with_exclusion, weights, 0, 4)
    training.train(without, same_weights, 0, 4)
    assert not np.array_equal(weights[1].numpy(), same_weights[1].numpy())
    np.testing.assert_array_equal(weights[0].numpy(), same_weights[0].numpy())


# --- polyak.torch.SGD ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["polyak", "polyak_again", "torch"])
@pytest.mark.parametrize("case", ["steplr", "onecycle"])
def test_the_torch_face_resumes_in_a_fresh_process_bit_for_bit(tmp_path, case, mode):
    model, opt, scheduler = resume_run.torch_run(case)
    resume_run.torch_train(model, opt, scheduler, 0, N)
    polyak.save(tmp_path / "at_start.ckpt", opt, variables=list(model.parameters()))
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "at_start.pt")
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    rates_at_n = [(g["lr"], g["momentum"]) for g in opt.param_groups]
    resume_run.torch_train(model, opt, scheduler, N, TOTAL)
    polyak.save(tmp_path / "uninterrupted.ckpt", opt, variables=list(model.parameters()))

    _, made = resume_run.torch_run(case)[:2]  # what a resumed run would start from without the groups' rates
    assert [(g["lr"], g["momentum"]) for g in made.param_groups] != rates_at_n

    _fresh_process("torch", case, mode, tmp_path, N, TOTAL)
    _, excluded = _assert_same_file(tmp_path / "resumed.ckpt", tmp_path / "uninterrupted.ckpt")
    assert excluded == ({"var_list": ["0.bias"], "var_names_pattern": None} if case == "steplr"
                        else {"var_list": [], "var_names_pattern": "bias"})


def test_polyak_load_gives_the_torch_face_its_groups_rates_and_keys_and_keeps_a_tensor_rate(tmp_path):
    model, opt, scheduler = resume_run.torch_run("onecycle")
    resume_run.torch_train(model, opt, scheduler, 0, 5)
    polyak.save(tmp_path / "run.ckpt", opt, variables=list(model.parameters()))
    fresh_model = resume_run.torch_run("onecycle")[0]
    fresh = polyak.torch.SGD(fresh_model.named_parameters(), lr=0.5, momentum=0.9, weight_decay=0.05,
                             use_ema=True, ema_overwrite_frequency=4, gradient_accumulation_steps=3)
    fresh.param_groups[0]["lr"] = torch.tensor(0.5, dtype=torch.float64)  # a group's rate may be a tensor
    polyak.load(tmp_path / "run.ckpt", fresh, variables=list(fresh_model.parameters()))
    group, saved = fresh.param_groups[0], opt.param_groups[0]
    assert isinstance(group["lr"], torch.Tensor) and group["lr"].item() == saved["lr"]
    assert group["momentum"] == saved["momentum"] != 0.9
    for key in ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"):
        assert group[key] == saved[key]
    # restored exclusions stay when the face rebuilds its optimizer (a group added)
    fresh.add_param_group({"params": [("extra", torch.nn.Parameter(torch.ones(2)))], "weight_decay": 0.1})
    assert fresh._prepare()._per_weight().decay_mask == (True, False, True, False, True)


def test_an_earlier_torch_checkpoint_without_groups_or_exclusions_loads_and_keeps_the_groups(tmp_path):
    model, opt, scheduler = resume_run.torch_run("steplr")
    resume_run.torch_train(model, opt, scheduler, 0, 4)
    path = tmp_path / "run.ckpt"
    polyak.save(path, opt)
    tensors, metadata = files.read(str(path))
    config = json.loads(metadata["config"])
    for group in config["config"]["param_groups"]:
        del group["other_keys"]  # as the first files with groups recorded them
    metadata = {k: v for k, v in metadata.items() if k not in (exclusions.FIELD, "checksum", "format",
                                                                 "format_version")}
    files.write(str(path), tensors, dict(metadata, config=json.dumps(config)))
    fresh = resume_run.torch_run("steplr", exclude=False)[1]
    polyak.load(path, fresh)
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in opt.param_groups]
    assert fresh._excluded == ((), ())  # the file records none
    files.write(str(path), tensors, dict(metadata, config=json.dumps({
        "module": "polyak.torch_face.sgd", "class_name": "_GroupedSGD", "config": {}, "registered_name": None})))
    earlier = resume_run.torch_run("steplr")[1]
    polyak.load(path, earlier)
    assert [g["lr"] for g in earlier.param_groups] == [0.1, 0.05]


# --- what a resume refuses -------------------------------------------------------------------------
def _torch_saved(path, steps=3):
    model, opt, scheduler = resume_run.torch_run("steplr")
    resume_run.torch_train(model, opt, scheduler, 0, steps)
    polyak.save(path, opt, variables=list(model.parameters()))
    return model


def _options(opt):
    return [{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in opt.param_groups]


def test_a_torch_face_with_other_groups_is_refused_and_unchanged_or_warned_with_strict_false(tmp_path):
    path = tmp_path / "run.ckpt"
    _torch_saved(path)
    model = resume_run.torch_run("steplr")[0]
    opt = polyak.torch.SGD(model.named_parameters(), lr=0.1, momentum=0.9)  # one group, not two
    before, weights = _options(opt), [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointMismatchError, match=r"mismatched param_groups: file: 2 group\(s\) of \[2, 2\] "
                                                      r"parameters, expected: 1 of \[4\]"):
        polyak.load(path, opt, variables=list(model.parameters()))
    assert _options(opt) == before and not opt.state
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    with pytest.warns(CheckpointMismatchWarning, match="param_groups"):
        polyak.load(path, opt, variables=list(model.parameters()), strict=False)
    assert _options(opt) == before and opt.state  # the state loaded, the groups as they were


def test_a_schedule_where_the_file_has_a_float_rate_is_a_mismatch(tmp_path):
    path = tmp_path / "run.ckpt"
    _torch_saved(path)
    model = resume_run.torch_run("steplr")[0]
    named = list(model.named_parameters())
    opt = polyak.torch.SGD([{"params": named[:2]}, {"params": named[2:], "lr": polyak.schedules.ExponentialDecay(
        0.05, 10, 0.5)}], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)
    with pytest.raises(CheckpointMismatchError, match=r"mismatched param_groups\[1\]\['lr'\]: file: a float, "
                                                      "expected: a schedule or callable"):
        polyak.load(path, opt)


@pytest.mark.parametrize("change, text", [
    (lambda groups: groups[0].update(lr=-1.0), r"options for param group 0 that it refuses: .*lr"),
    (lambda groups: groups[1].update(momentum="fast"), r"options for param group 1 that it refuses: .*momentum"),
    (lambda groups: groups[0].update(other_keys=[1]), r"is damaged: .*\[0\]\['other_keys'\] must be a dict"),
    (lambda groups: groups[0].pop("nesterov"), r"is damaged: .*each with lr, momentum, nesterov"),
])
def test_bad_group_options_in_a_file_are_refused_and_change_nothing(tmp_path, change, text):
    path = tmp_path / "run.ckpt"
    _torch_saved(path)
    tensors, metadata = files.read(str(path))
    config = json.loads(metadata["config"])
    change(config["config"]["param_groups"])
    metadata = {k: v for k, v in metadata.items() if k not in ("checksum", "format", "format_version")}
    files.write(str(path), tensors, dict(metadata, config=json.dumps(config)))
    model, opt, _ = resume_run.torch_run("steplr")
    before = _options(opt)
    with pytest.raises(ValueError, match=text):
        polyak.load(path, opt, variables=list(model.parameters()))
    assert _options(opt) == before and not opt.state


@pytest.mark.parametrize("entry", ["[]", "{\"var_list\": [1], \"var_names_pattern\": null}",
                                   "{\"var_list\": [], \"var_names_pattern\": \"(\"}", "not json",
                                   "{\"var_list\": [\"a\", \"a\"], \"var_names_pattern\": null}"])
def test_a_damaged_exclusions_entry_is_refused_and_changes_nothing(tmp_path, entry):
    optimizer, weights = resume_run.keras_run("var_list")
    training.train(optimizer, weights, 0, 2)
    path = tmp_path / "run.ckpt"
    polyak.save(path, optimizer, weights)
    tensors, metadata = files.read(str(path))
    metadata = {k: v for k, v in metadata.items() if k not in ("checksum", "format", "format_version")}
    files.write(str(path), tensors, dict(metadata, **{exclusions.FIELD: entry}))
    target = polyak.SGD(**training.OPTIONS)
    fresh = training.make_weights()
    with pytest.raises(ValueError, match="weight_decay_exclusions' entry must be JSON"):
        polyak.load(path, target, fresh)
    assert not target.built and not target._has_decay_exclusions()


def test_an_exclusion_naming_no_weight_is_a_mismatch(tmp_path):
    kernel = polyak.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = polyak.Variable(np.ones(2, np.float32), name="bias")
    optimizer = polyak.SGD(0.1, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_list=[bias])
    optimizer.apply([np.ones((2, 2), np.float32), np.ones(2, np.float32)], [kernel, bias])
    polyak.save(tmp_path / "run.ckpt", optimizer)
    other = [polyak.Variable(np.ones((2, 2), np.float32), name="kernel"),
             polyak.Variable(np.ones(2, np.float32), name="offset")]
    with pytest.raises(CheckpointMismatchError, match="mismatched weight-decay exclusion 'bias': file: excludes"):
        polyak.load(tmp_path / "run.ckpt", variables=other)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = polyak.load(tmp_path / "run.ckpt", variables=other, strict=False)
    assert [type(w.message) for w in caught] == [CheckpointMismatchWarning]
    assert loaded._per_weight().decay_mask == (True, True)


def test_a_stepped_optimizer_without_exclusions_gets_the_files_and_continues_the_run(tmp_path):
    optimizer, weights = resume_run.keras_run("var_list")
    training.train(optimizer, weights, 0, N)
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    training.train(optimizer, weights, N, TOTAL)
    other, other_weights = resume_run.keras_run("var_list", exclude=False)
    training.train(other, other_weights, 0, 2)  # built and stepped, its fused state made
    assert polyak.load(tmp_path / "run.ckpt", other, other_weights) is other
    training.train(other, other_weights, N, TOTAL)
    for a, b in zip(other_weights, weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(other.variables, optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_an_optimizer_with_exclusions_of_its_own_keeps_them(tmp_path):
    optimizer, weights = resume_run.keras_run("var_names")
    training.train(optimizer, weights, 0, 2)
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    target = polyak.SGD(**training.OPTIONS)
    target.exclude_from_weight_decay(var_names=["head"])
    polyak.load(tmp_path / "run.ckpt", target, training.make_weights())
    assert target._per_weight().decay_mask == (True, True, False)


def test_saving_an_unbuilt_optimizer_that_excludes_by_variable_is_refused_and_writes_nothing(tmp_path):
    optimizer = polyak.SGD(0.1, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_list=[polyak.Variable(np.ones(2, np.float32), name="bias")])
    with pytest.raises(ValueError, match=r"excludes 1 weight\(s\) from weight decay by `var_list` and is not built"):
        polyak.save(tmp_path / "run.ckpt", optimizer)
    assert not os.listdir(tmp_path)
