"""Checkpoint files: exact round trips and resumes, names not positions, strict refusal, damage detected."""

import functools
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import safetensors.numpy

os.environ.setdefault("KERAS_BACKEND", "numpy")
import keras  # noqa: E402

import polyak  # noqa: E402
import training  # noqa: E402
from polyak.saving import CheckpointMismatchError, CheckpointMismatchWarning, files, keras_store  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _trained(steps=5, **overrides):
    weights = training.make_weights()
    optimizer = training.make_optimizer() if not overrides else polyak.SGD(**{**training.OPTIONS, **overrides})
    training.train(optimizer, weights, 0, steps)
    return optimizer, weights


def _state(optimizer, weights):
    return [v.numpy().copy() for v in optimizer.variables], [w.numpy().copy() for w in weights]


def _assert_same(a, b):
    for xs, ys in zip(a, b):
        assert len(xs) == len(ys)
        for x, y in zip(xs, ys):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


# --- round trips ------------------------------------------------------------------------
def test_round_trip_recreates_the_optimizer_bit_for_bit(tmp_path):
    optimizer, weights = _trained()
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    fresh = training.make_weights()
    restored = polyak.load(tmp_path / "run.ckpt", variables=fresh)
    assert type(restored) is polyak.SGD and restored.get_config() == optimizer.get_config()
    assert [v.path for v in restored.variables] == [v.path for v in optimizer.variables]
    _assert_same(_state(restored, fresh), _state(optimizer, weights))
    assert int(restored.skipped_steps.numpy()) == 1 and int(restored._iterations.numpy()) == 4


def test_load_into_a_given_optimizer_built_or_not(tmp_path):
    optimizer, weights = _trained()
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    unbuilt, fresh = training.make_optimizer(), training.make_weights()
    assert polyak.load(tmp_path / "run.ckpt", unbuilt, fresh) is unbuilt and unbuilt.built
    _assert_same(_state(unbuilt, fresh), _state(optimizer, weights))
    built, fresh = training.make_optimizer(), training.make_weights()
    built.build(fresh)
    polyak.load(tmp_path / "run.ckpt", built)  # no variables: the optimizer's state only
    _assert_same([_state(built, fresh)[0]], [_state(optimizer, weights)[0]])
    np.testing.assert_array_equal(fresh[0].numpy(), training.make_weights()[0].numpy())


def test_state_follows_its_weight_by_name_not_by_position(tmp_path):
    optimizer, weights = _trained()
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    reordered = training.make_weights()[::-1]  # a model whose weights come in another order
    restored = polyak.load(tmp_path / "run.ckpt", variables=reordered)
    for w in reordered:
        original = next(x for x in weights if x.name == w.name)
        np.testing.assert_array_equal(w.numpy(), original.numpy())
        k, j = restored._get_variable_index(w), optimizer._get_variable_index(original)
        np.testing.assert_array_equal(restored.momentums[k].numpy(), optimizer.momentums[j].numpy())
        np.testing.assert_array_equal(restored._averages[k].numpy(), optimizer._averages[j].numpy())


def test_file_layout(tmp_path):
    optimizer, weights = _trained()
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    tensors, metadata = files.read(str(tmp_path / "run.ckpt"))
    assert metadata["format"] == "polyak.checkpoint" and metadata["format_version"] == "1"
    assert metadata["checksum"].startswith("sha256:")
    assert json.loads(metadata["config"]) == polyak.optimizers.serialize(optimizer)
    order = json.loads(metadata["optimizer_variables"])
    assert order[:3] == ["optimizer/iteration", "optimizer/dense_kernel/average", "optimizer/dense_bias/average"]
    assert "optimizer/head_kernel/momentum" in order and order[-1] == "optimizer/skipped_steps"
    assert json.loads(metadata["variables"]) == ["variables/dense_kernel", "variables/dense_bias",
                                                 "variables/head_kernel"]
    assert tensors["optimizer/iteration"].dtype == np.int64 and tensors["optimizer/iteration"].shape == ()
    with open(tmp_path / "run.ckpt", "rb") as f:
        assert b"pickle" not in f.read() and safetensors.numpy.load_file(str(tmp_path / "run.ckpt"))


def test_another_framework_reads_the_file(tmp_path):
    import safetensors.flax  # JAX: already imported by Keras's NumPy backend

    optimizer, weights = _trained()
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    arrays = safetensors.flax.load_file(str(tmp_path / "run.ckpt"))
    np.testing.assert_array_equal(np.asarray(arrays["variables/dense_kernel"]), weights[0].numpy())


def test_keras_positional_store_loads_into_keras(tmp_path):
    """``keras_store`` gives Keras's ``{"0": ...}`` store: Keras continues the run as polyak does."""
    options = dict(learning_rate=0.05, momentum=0.9, use_ema=True, gradient_accumulation_steps=2)
    init = training.make_weights()
    p_opt, p_vars = polyak.SGD(**options), [polyak.Variable(w.numpy(), name=w.name) for w in init]
    training.train(p_opt, p_vars, 0, 5)
    polyak.save(tmp_path / "run.ckpt", p_opt)
    k_vars = [keras.Variable(w.numpy()) for w in p_vars]
    k_opt = keras.optimizers.SGD(**options)
    k_opt.build(k_vars)
    k_opt.load_own_variables(keras_store(tmp_path / "run.ckpt"))
    training.train(k_opt, k_vars, 5, 9)
    training.train(p_opt, p_vars, 5, 9)
    for k, p in zip(k_vars, p_vars):
        np.testing.assert_array_equal(p.numpy(), k.numpy())


# --- exact resume in a fresh process --------------------------------------------------------
@pytest.mark.parametrize("mode", ["given", "recreate"])
def test_resume_in_a_fresh_process_is_bit_for_bit(tmp_path, mode):
    """N steps, save, new process: load, M steps == N + M uninterrupted steps. N = 8 (7 updates) stops mid
    accumulation cycle and between EMA overwrites, with a skipped NaN step on either side; the bias
    exclusion is the given optimizer's own, or the one the file records for the recreated one."""
    n, m = 8, 6
    weights, optimizer = training.make_weights(), training.make_optimizer()
    training.train(optimizer, weights, 0, n)
    polyak.save(tmp_path / "at_n.ckpt", optimizer, weights)
    assert int(optimizer._iterations.numpy()) % 3 != 0
    training.train(optimizer, weights, n, n + m)
    polyak.save(tmp_path / "uninterrupted.ckpt", optimizer, weights)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), TESTS, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, os.path.join(TESTS, "training.py"), str(tmp_path / "at_n.ckpt"), str(n),
                    str(n + m), str(tmp_path / "resumed.ckpt"), mode], check=True, env=env, timeout=60)
    resumed, _ = files.read(str(tmp_path / "resumed.ckpt"))
    expected, _ = files.read(str(tmp_path / "uninterrupted.ckpt"))
    assert sorted(resumed) == sorted(expected)
    for key in expected:
        assert resumed[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)
    assert int(expected["optimizer/skipped_steps"]) == 2


# --- strict: refuse, list, change nothing ------------------------------------------------------
def _renamed():
    return [polyak.Variable(w.numpy(), name=w.name.replace("head", "tail")) for w in training.make_weights()]


def _reshaped():
    return [polyak.Variable(np.zeros(w.shape[::-1]), name=w.name) for w in training.make_weights()]


MISMATCHES = [
    ("renamed weight", lambda: (training.make_optimizer(), _renamed()),
     ["optimizer/tail_kernel/momentum", "variables/tail_kernel"], ["optimizer/head_kernel/momentum"], []),
    ("reshaped weights", lambda: (training.make_optimizer(), _reshaped()), [], [],
     ["optimizer/dense_kernel/momentum", "variables/head_kernel"]),
    ("float64 weights", lambda: (training.make_optimizer(), training.make_weights("float64")), [], [],
     ["optimizer/dense_bias/average", "variables/dense_bias"]),
    ("no momentum", lambda: (polyak.SGD(**{**training.OPTIONS, "momentum": 0.0}), training.make_weights()),
     [], ["optimizer/dense_kernel/momentum"], []),
    ("float learning rate", lambda: (polyak.SGD(**{**training.OPTIONS, "learning_rate": 0.1}),
                                     training.make_weights()), ["optimizer/learning_rate"], [], []),
    ("no skip counter", lambda: (polyak.SGD(**{**training.OPTIONS, "skip_nonfinite": False}),
                                 training.make_weights()), [], ["optimizer/skipped_steps"], []),
    ("unbuilt, no variables", lambda: (training.make_optimizer(), None), [],
     ["optimizer/dense_kernel/momentum"], []),
]


@pytest.mark.parametrize("case,make,missing,unexpected,mismatched", MISMATCHES, ids=[c[0] for c in MISMATCHES])
def test_strict_load_refuses_a_mismatch_and_changes_nothing(tmp_path, case, make, missing, unexpected,
                                                            mismatched):
    saved, saved_weights = _trained()
    polyak.save(tmp_path / "run.ckpt", saved, saved_weights)
    optimizer, weights = make()
    before_vars = [v.numpy().copy() for v in optimizer.variables]
    before_weights = [w.numpy().copy() for w in weights or ()]
    with pytest.raises(CheckpointMismatchError) as info:
        polyak.load(tmp_path / "run.ckpt", optimizer, weights)
    report = info.value.mismatch
    assert set(missing) <= set(report.missing) and set(unexpected) <= set(report.unexpected)
    assert set(mismatched) <= {key for key, _ in report.mismatched}
    assert isinstance(info.value, ValueError) and "Nothing was loaded" in str(info.value)
    for key in missing + unexpected + mismatched:
        assert key in str(info.value)
    assert not optimizer.built and len(optimizer.variables) == len(before_vars)
    for v, b in zip(optimizer.variables, before_vars):
        np.testing.assert_array_equal(v.numpy(), b)
    for w, b in zip(weights or (), before_weights):
        np.testing.assert_array_equal(w.numpy(), b)


def test_strict_refusal_of_a_recreated_optimizer_touches_no_weight(tmp_path):
    saved, saved_weights = _trained()
    polyak.save(tmp_path / "run.ckpt", saved, saved_weights)
    weights = _renamed()
    before = [w.numpy().copy() for w in weights]
    with pytest.raises(ValueError, match="variables/tail_kernel"):
        polyak.load(tmp_path / "run.ckpt", variables=weights)
    for w, b in zip(weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_non_strict_load_takes_the_matches_and_reports_the_rest(tmp_path):
    saved, saved_weights = _trained()
    polyak.save(tmp_path / "run.ckpt", saved, saved_weights)
    optimizer, weights = training.make_optimizer(), _renamed()
    with pytest.warns(CheckpointMismatchWarning) as record:
        polyak.load(tmp_path / "run.ckpt", optimizer, weights, strict=False)
    report = record[0].message.mismatch
    assert "variables/tail_kernel" in report.missing and "variables/head_kernel" in report.unexpected
    np.testing.assert_array_equal(weights[0].numpy(), saved_weights[0].numpy())
    np.testing.assert_array_equal(optimizer.momentums[0].numpy(), saved.momentums[0].numpy())
    assert not np.array_equal(weights[2].numpy(), saved_weights[2].numpy())  # the renamed one: untouched
    assert int(optimizer._iterations.numpy()) == int(saved._iterations.numpy())


# --- bad input and damaged files -----------------------------------------------------------------
def test_save_refuses_bad_input_before_touching_the_disk(tmp_path):
    target = tmp_path / "run.ckpt"
    target.write_bytes(b"old")
    weights = [np.zeros(2, np.float32)]
    cases = [
        (lambda: polyak.save(target, polyak.SGD(learning_rate=functools.partial(float, 0.1))), TypeError,
         "Cannot serialize the learning rate"),
        (lambda: polyak.save(target, "sgd"), TypeError, "optimizer='sgd'"),
        (lambda: polyak.save(3.5, polyak.SGD()), TypeError, "path=3.5"),
        (lambda: polyak.save(target, polyak.SGD(), variables=[[1.0]]), TypeError, "variables[0]"),
        (lambda: polyak.save(target, polyak.SGD(), variables=[polyak.Variable(np.zeros(1), name="w"),
                                                              polyak.Variable(np.zeros(1), name="w")]),
         ValueError, "variables/w"),
    ]
    for call, error, text in cases:
        with pytest.raises(error) as info:
            call()
        assert text in str(info.value)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.ckpt"]
    polyak.save(target, polyak.SGD(), weights)  # and plain arrays are keyed by position
    assert "variables/variable_0" in files.read(str(target))[0]


def test_load_refuses_bad_arguments(tmp_path):
    optimizer, weights = _trained()
    polyak.save(tmp_path / "run.ckpt", optimizer, weights)
    with pytest.raises(TypeError, match="strict=1"):
        polyak.load(tmp_path / "run.ckpt", strict=1)
    with pytest.raises(TypeError, match="optimizer="):
        polyak.load(tmp_path / "run.ckpt", optimizer={"class_name": "SGD"})
    with pytest.raises(FileNotFoundError):
        polyak.load(tmp_path / "nothing.ckpt")


def _rewrite(path, tensors=None, **metadata_changes):
    """Re-encode a checkpoint with changed arrays or metadata and a *valid* checksum."""
    old_tensors, metadata = files.read(str(path))
    metadata = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "checksum")}
    metadata.update(metadata_changes)
    path.write_bytes(files.encode({**old_tensors, **(tensors or {})}, metadata))


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flipped payload byte":
        data[-3] ^= 0x40
    elif how == "flipped header byte":
        data[40] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how == "random bytes":
        data = bytearray(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif how == "huge header size":
        data[:8] = (2**62).to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped payload byte", "flipped header byte", "truncated", "empty",
                                 "random bytes", "huge header size"])
def test_a_damaged_file_is_refused_and_changes_nothing(tmp_path, how):
    optimizer, weights = _trained()
    path = tmp_path / "run.ckpt"
    polyak.save(path, optimizer, weights)
    _damage(path, how)
    target, fresh = training.make_optimizer(), training.make_weights()
    before = [w.numpy().copy() for w in fresh]
    with pytest.raises(ValueError):
        polyak.load(path, target, fresh)
    assert not target.built
    for w, b in zip(fresh, before):
        np.testing.assert_array_equal(w.numpy(), b)


@pytest.mark.parametrize("change,text", [
    ({"format_version": "2"}, "format version '2'"),
    ({"format": "other"}, "not a polyak checkpoint"),
    ({"config": "[[[" * 100000}, "not valid JSON"),
    ({"optimizer_variables": '["optimizer/iteration"]'}, "not the ones its metadata lists"),
    ({"optimizer_variables": "{}"}, "must list distinct keys"),
    ({"config": json.dumps({"class_name": "system", "module": "os", "config": {}})}, "Unknown optimizer 'system'"),
    ({"tensors": {"optimizer/iteration": np.array(-5, np.int64)}}, "invalid optimizer/iteration"),
    ({"tensors": {"optimizer/skipped_steps": np.array(1.5)}}, "invalid optimizer/skipped_steps"),
])
def test_a_hostile_file_with_a_valid_checksum_is_refused(tmp_path, change, text):
    optimizer, weights = _trained()
    path = tmp_path / "run.ckpt"
    polyak.save(path, optimizer, weights)
    change = dict(change)
    tensors = change.pop("tensors", None)
    if "format" in change or "format_version" in change:
        old, metadata = files.read(str(path))
        metadata.update(change)
        metadata["checksum"] = files.checksum(old, metadata)
        path.write_bytes(safetensors.numpy.save(old, metadata=metadata))
    else:
        _rewrite(path, tensors, **change)
    fresh = training.make_weights()
    with pytest.raises(ValueError) as info:
        polyak.load(path, variables=fresh)
    assert text in str(info.value)


@pytest.mark.parametrize("rate", [np.nan, -1.0, np.inf])
def test_a_stored_learning_rate_must_be_one_the_constructor_accepts(tmp_path, rate):
    path = tmp_path / "run.ckpt"
    polyak.save(path, polyak.SGD(0.1, momentum=0.9))
    _rewrite(path, {"optimizer/learning_rate": np.array(rate, np.float32)})
    optimizer = polyak.SGD(0.5)
    with pytest.raises(ValueError, match="invalid learning rate"):
        polyak.load(path, optimizer)
    assert float(optimizer.learning_rate) == 0.5


def test_a_safetensors_file_from_elsewhere_is_not_a_checkpoint(tmp_path):
    safetensors.numpy.save_file({"w": np.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not a polyak checkpoint"):
        polyak.load(tmp_path / "model.safetensors")


# --- the atomic write ------------------------------------------------------------------------------
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    polyak.save(path, polyak.SGD(0.5))
    old = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        polyak.save(path, polyak.SGD(0.25))
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["run.ckpt"]


def test_the_write_is_synced_then_renamed_and_keeps_permissions(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    polyak.save(path, polyak.SGD(0.5))
    os.chmod(path, 0o600)
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    polyak.save(path, polyak.SGD(0.25))
    assert calls == ["fsync", "replace", "fsync"]  # the data, the rename, the directory
    assert (os.stat(path).st_mode & 0o777) == 0o600 and os.listdir(tmp_path) == ["run.ckpt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(polyak.load(path).learning_rate) == 0.25
