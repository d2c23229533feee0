"""Configs never execute anything: only polyak's classes and registered ones are built."""

import base64
import json
import marshal
import os
import sys

import numpy as np
import pytest

import polyak
from polyak import optimizers, schedules
from polyak.saving import files
from user_schedules import Halving


def _lambda_config():
    """Keras's legacy form of a serialized Python function: marshalled bytecode, base64."""
    code = base64.b64encode(marshal.dumps((lambda: os.system("echo pwned")).__code__)).decode()
    return {"class_name": "__lambda__", "config": {"code": code, "defaults": None, "closure": None}}


HOSTILE = {
    "os.system by module": {"module": "os", "class_name": "system", "config": {"command": "echo pwned"}},
    "dotted class name": {"class_name": "os.system", "config": {}},
    "arbitrary module": {"module": "subprocess", "class_name": "Popen", "config": {"args": ["true"]}},
    "keras function form": {"module": "builtins", "class_name": "function", "config": "eval",
                            "registered_name": "function"},
    "marshalled lambda": _lambda_config(),
    "registered_name of a module": {"class_name": "Popen", "registered_name": "subprocess>Popen", "config": {}},
    "unhashable class name": {"class_name": ["SGD"], "config": {}},
    "unhashable registered name": {"class_name": "SGD", "registered_name": {"a": 1}, "config": {}},
    "config not a dict": {"class_name": "SGD", "config": "os.system('echo pwned')"},
    "non-string keys": {"class_name": "SGD", "config": {1: 2}},
    "not a dict": "os.system",
}


@pytest.fixture
def tripwires(monkeypatch):
    """Fail loudly if anything reaches for a shell, and record imports."""
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    monkeypatch.setattr(os, "popen", lambda *a, **k: calls.append(a))
    before = set(sys.modules)
    yield calls
    assert not calls, f"something was executed: {calls}"
    assert set(sys.modules) - before == set(), "deserializing imported a module"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_optimizer_configs_are_refused(name, tripwires):
    config = HOSTILE[name]
    with pytest.raises(ValueError):
        optimizers.deserialize(config)
    if isinstance(config, dict):
        with pytest.raises(ValueError):
            optimizers.get(config)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_learning_rates_are_refused(name, tripwires):
    with pytest.raises(ValueError):
        schedules.deserialize(HOSTILE[name])
    if isinstance(HOSTILE[name], dict):
        with pytest.raises((ValueError, TypeError)):
            polyak.SGD.from_config({"learning_rate": HOSTILE[name], "momentum": 0.9})


@pytest.mark.parametrize("name", [n for n in HOSTILE if isinstance(HOSTILE[n], dict)])
def test_hostile_checkpoint_configs_are_refused(tmp_path, name, tripwires):
    path = tmp_path / "run.ckpt"
    polyak.save(path, polyak.SGD(momentum=0.9))
    tensors, metadata = files.read(str(path))
    metadata = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "checksum")}
    metadata["config"] = json.dumps(HOSTILE[name])
    path.write_bytes(files.encode(tensors, metadata))
    with pytest.raises(ValueError):
        polyak.load(path)


def test_a_class_of_the_wrong_kind_is_refused():
    @polyak.register(package="tests_safe")
    class Quarter(schedules.LearningRateSchedule):
        def __call__(self, step):
            return np.float32(0.25)

        def get_config(self):
            return {}

    with pytest.raises(ValueError, match="not a subclass of Optimizer"):
        optimizers.deserialize({"class_name": "Quarter", "registered_name": "tests_safe>Quarter", "config": {}})
    with pytest.raises(ValueError, match="not a subclass of LearningRateSchedule"):
        schedules.deserialize({"class_name": "SGD", "config": {}}, custom_objects={"SGD": polyak.SGD})
    with pytest.raises(ValueError, match="not a subclass of LearningRateSchedule"):
        schedules.deserialize({"class_name": "f", "config": {}}, custom_objects={"f": print})
    with pytest.raises(TypeError, match="custom_objects"):
        schedules.deserialize({"class_name": "Quarter", "config": {}}, custom_objects=[("Quarter", Quarter)])
    restored = optimizers.deserialize(optimizers.serialize(polyak.SGD(learning_rate=Quarter())))
    assert isinstance(restored._learning_rate, Quarter)


def test_registered_classes_load_from_a_checkpoint(tmp_path):
    polyak.save(tmp_path / "run.ckpt", polyak.SGD(learning_rate=Halving(np.float32(0.5))))
    restored = polyak.load(tmp_path / "run.ckpt")
    assert isinstance(restored._learning_rate, Halving) and restored._learning_rate.rate == 0.5


def test_a_lambda_learning_rate_is_written_as_keras_writes_it_but_never_loaded(tmp_path):
    opt = polyak.SGD(learning_rate=lambda: 0.1)
    with pytest.warns(UserWarning, match="lambda"):
        assert optimizers.serialize(opt)["config"]["learning_rate"]["class_name"] == "__lambda__"
    with pytest.warns(UserWarning, match="lambda"):
        polyak.save(tmp_path / "run.ckpt", opt)
    with pytest.raises(ValueError, match=r"lambda.*polyak\.register"):
        polyak.load(tmp_path / "run.ckpt")
    assert polyak.load(tmp_path / "run.ckpt", polyak.SGD(learning_rate=lambda: 0.1)) is not None
