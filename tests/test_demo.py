"""``polyak demo``: its outputs, exact resume, and the user errors it refuses."""

import importlib.util
import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import polyak.demo  # noqa: E402
from polyak.demo import job  # noqa: E402
from polyak.demo.checkpoint import load_progress, progress_path  # noqa: E402
from polyak.demo.mlp import NumpyMLP  # noqa: E402
from polyak.saving import files, keras_store  # noqa: E402


class _Stored:
    """What a demo checkpoint holds: the progress file, and the model and optimizer arrays."""

    def __init__(self, path):
        progress = load_progress(path)
        self.rng_state, self.history = progress.rng_state, progress.history
        tensors, _ = files.read(str(path))
        self.model = {k[len("variables/"):]: a for k, a in tensors.items() if k.startswith("variables/")}
        self.optimizer = keras_store(path)


load_checkpoint = _Stored


def _quiet(*args, **kwargs):
    pass


def _run(out, **kwargs):
    return polyak.demo.run(out, progress=False, echo=_quiet, **kwargs)


def _numbers(metrics):
    """The numbers of a run that do not depend on the clock."""
    return [{k: v for k, v in epoch.items() if "seconds" not in k} for epoch in metrics["epochs"]]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines = []
    polyak.demo.run(out, epochs=1, progress=True, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    return out, lines


def test_one_epoch_writes_a_plausible_figure(one_epoch):
    import matplotlib.image

    out, _ = one_epoch
    path = out / "training.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 1200 and 800 <= width <= 2400
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_one_epoch_writes_finite_metrics_above_chance(one_epoch):
    out, _ = one_epoch
    metrics = json.loads((out / "metrics.json").read_text())
    (epoch,) = metrics["epochs"]
    assert epoch["epoch"] == 1 and epoch["steps"] == 43
    for value in [*epoch.values(), *metrics["final"].values(), *metrics["timing"].values()]:
        assert isinstance(value, (int, float)) and math.isfinite(value)
    assert metrics["complete"] is True
    assert metrics["final"]["test_accuracy"] > 0.8  # chance is 0.1
    assert metrics["final"]["test_accuracy_ema"] > 0.3
    assert metrics["timing"]["optimizer_steps_per_second"] > metrics["timing"]["training_steps_per_second"] > 0
    assert metrics["optimizer"]["nesterov"] is True and metrics["optimizer"]["use_ema"] is True
    assert metrics["optimizer"]["learning_rate"]["class_name"] == "CosineDecay"


def test_one_epoch_prints_a_summary(one_epoch):
    _, lines = one_epoch
    text = "\n".join(lines)
    for words in ("test accuracy", "raw weights", "EMA weights", "time per epoch", "steps per second"):
        assert words in text
    # what depends on the machine is said so
    assert "alike in every run on this machine; another CPU, BLAS or thread count rounds" in text
    assert "differently, and training carries that into them" in text


def test_the_recipe_decays_kernels_but_not_biases():
    from polyak.demo.optimizer import make_optimizer
    from polyak.demo.settings import Settings

    model = NumpyMLP((8,), seed=0)
    opt = make_optimizer(Settings(), total_steps=100)
    opt.build(model.weights)
    assert [opt._use_weight_decay(w) for w in model.weights] == [True, False, True, False]
    assert opt.nesterov and opt.momentum == 0.9 and opt.use_ema and opt.global_clipnorm == 1.0
    assert float(opt.learning_rate) == 0.0  # the warmup starts from 0


def _assert_same_run(a, b, a_dir, b_dir):
    assert _numbers(a) == _numbers(b)
    assert a["final"] == b["final"]
    first, second = load_checkpoint(a_dir / "checkpoint.ckpt"), load_checkpoint(b_dir / "checkpoint.ckpt")
    assert first.rng_state == second.rng_state
    for name in first.model:
        np.testing.assert_array_equal(first.model[name], second.model[name], strict=True)
    assert first.optimizer.keys() == second.optimizer.keys()
    for key in first.optimizer:
        np.testing.assert_array_equal(first.optimizer[key], second.optimizer[key], strict=True)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, _run(out, epochs=3, batch_size=64)


def test_resume_after_stop_is_bit_identical(tmp_path, straight_run):
    straight_dir, straight = straight_run
    halves = _run(tmp_path, epochs=3, batch_size=64, stop_after=1)
    assert halves["complete"] is False and len(halves["epochs"]) == 1
    resumed = _run(tmp_path, resume=True)
    assert resumed["complete"] is True
    _assert_same_run(straight, resumed, straight_dir, tmp_path)


def test_resume_after_interrupt_is_bit_identical(tmp_path, straight_run, monkeypatch, capsys):
    straight_dir, straight = straight_run
    real_epoch, calls = job._epoch, []

    def interrupted_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(job, "_epoch", interrupted_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, epochs=3, batch_size=64)
    assert "holds epochs 1-1" in capsys.readouterr().err
    monkeypatch.setattr(job, "_epoch", real_epoch)
    resumed = _run(tmp_path, resume=tmp_path / "checkpoint.ckpt")
    _assert_same_run(straight, resumed, straight_dir, tmp_path)


def test_resume_refuses_other_settings(straight_run):
    straight_dir, _ = straight_run
    before = (straight_dir / "checkpoint.ckpt").read_bytes()
    with pytest.raises(polyak.demo.DemoError, match=r"--epochs 5 differs from the checkpoint's epochs=3"):
        _run(straight_dir, resume=True, epochs=5)
    assert (straight_dir / "checkpoint.ckpt").read_bytes() == before


def _edited_progress(edit):
    """A corruption of the progress file beside a good checkpoint."""
    def corrupt(good_dir, bad):
        bad.write_bytes((good_dir / "checkpoint.ckpt").read_bytes())
        content = json.loads(progress_path(good_dir / "checkpoint.ckpt").read_text())
        text = edit(content)
        progress_path(bad).write_text(text if isinstance(text, str) else json.dumps(content))
    return corrupt


def _rewritten_checkpoint(**changes):
    """The good checkpoint written again (a valid file) with arrays replaced, or removed for None."""
    def corrupt(good_dir, bad):
        tensors, metadata = files.read(str(good_dir / "checkpoint.ckpt"))
        metadata = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "checksum")}
        tensors = {k: v for k, v in {**tensors, **changes}.items() if v is not None}
        if changes.get("optimizer/dense_0_kernel/momentum", 0) is None:
            keys = [k for k in json.loads(metadata["optimizer_variables"]) if k in tensors]
            metadata["optimizer_variables"] = json.dumps(keys)
        bad.write_bytes(files.encode(tensors, metadata))
        progress_path(bad).write_bytes(progress_path(good_dir / "checkpoint.ckpt").read_bytes())
    return corrupt


def _damaged_checkpoint(damage):
    def corrupt(good_dir, bad):
        bad.write_bytes(damage((good_dir / "checkpoint.ckpt").read_bytes()))
        progress_path(bad).write_bytes(progress_path(good_dir / "checkpoint.ckpt").read_bytes())
    return corrupt


def _flip(good: bytes):
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    return bytes(flipped)


def _missing_progress(good_dir, bad):
    bad.write_bytes((good_dir / "checkpoint.ckpt").read_bytes())


CORRUPTIONS = {
    "truncated": _damaged_checkpoint(lambda good: good[: len(good) // 2]),
    "not a checkpoint": _damaged_checkpoint(lambda good: b"hello"),
    "bit flip": _damaged_checkpoint(_flip),
    "no progress file": _missing_progress,
    "missing entry": _edited_progress(lambda c: c.pop("rng_state")),
    "bad json": _edited_progress(lambda c: "{not json"),
    "bad settings": _edited_progress(lambda c: c.update(settings={"epochs": 3})),
    "bad history": _edited_progress(lambda c: c.update(history=[1, 2])),
    "bad generator": _edited_progress(lambda c: c.update(rng_state={"bit_generator": "MT19937"})),
    "progress of another step": _edited_progress(lambda c: c.update(iterations=c["iterations"] + 1)),
    "wrong weight shape": _rewritten_checkpoint(**{"variables/dense_0_kernel": np.zeros((3, 3), np.float32)}),
    "wrong optimizer shape": _rewritten_checkpoint(**{"optimizer/dense_0_kernel/momentum": np.zeros((3, 3),
                                                                                                   np.float32)}),
    "missing optimizer variable": _rewritten_checkpoint(**{"optimizer/dense_0_kernel/momentum": None}),
}
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_a_clear_error_that_changes_nothing(tmp_path, straight_run, corruption):
    straight_dir, _ = straight_run
    bad = tmp_path / "bad.ckpt"
    CORRUPTIONS[corruption](straight_dir, bad)
    corrupt = bad.read_bytes()
    out = tmp_path / "out"
    with pytest.raises(polyak.demo.DemoError) as error:
        _run(out, resume=bad)
    assert "\n" not in str(error.value)
    assert not out.exists()
    assert bad.read_bytes() == corrupt


def test_the_checkpoint_is_a_polyak_checkpoint(straight_run):
    straight_dir, _ = straight_run
    model = NumpyMLP(polyak.demo.Settings().hidden, seed=1)  # other weights, the same names
    restored = polyak.load(straight_dir / "checkpoint.ckpt", variables=model.weights)
    assert isinstance(restored, polyak.SGD) and restored.nesterov and restored.use_ema
    stored = _Stored(straight_dir / "checkpoint.ckpt")
    for name, array in model.state().items():
        np.testing.assert_array_equal(array, stored.model[name], strict=True)
    assert int(restored.iterations.numpy()) == sum(epoch["steps"] for epoch in stored.history)


def test_a_missing_checkpoint_says_how_to_start(tmp_path):
    with pytest.raises(polyak.demo.DemoError, match="no checkpoint to resume.*without --resume"):
        _run(tmp_path, resume=True)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_out_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(polyak.demo.DemoError, match="cannot write to --out"):
        _run(blocker / "out", epochs=1)
    with pytest.raises(polyak.demo.DemoError, match="cannot write to --out"):
        _run(blocker, epochs=1)
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("options, message", [
    ({"epochs": 0}, r"epochs must be a positive integer. Received: epochs=0"),
    ({"batch_size": 2.5}, r"batch_size must be a positive integer. Received: batch_size=2.5"),
    ({"seed": -1}, r"seed must be a non-negative integer. Received: seed=-1"),
    ({"backend": "tensorflow"}, r"unknown backend 'tensorflow'"),
    ({"stop_after": 0}, r"--stop-after must be a positive number of epochs. Received: 0"),
])
def test_bad_options_are_clear_errors(tmp_path, options, message):
    with pytest.raises(polyak.demo.DemoError, match=message):
        _run(tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


# --- the same run on PyTorch and JAX --------------------------------------------------------------
FRAMEWORKS = [pytest.param("torch", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                             reason="needs torch")),
              pytest.param("jax", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                                           reason="needs jax"))]


def _torch_threads(backend):
    if backend == "torch":
        import torch

        return torch.get_num_threads()
    return None


@pytest.mark.parametrize("backend", FRAMEWORKS)
def test_one_epoch_on_a_framework(tmp_path, backend):
    threads = _torch_threads(backend)
    lines = []
    metrics = polyak.demo.run(tmp_path, epochs=1, backend=backend, progress=True,
                              echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    (epoch,) = metrics["epochs"]
    assert epoch["steps"] == 43 and metrics["settings"]["backend"] == backend
    for value in [*epoch.values(), *metrics["final"].values(), *metrics["timing"].values()]:
        assert isinstance(value, (int, float)) and math.isfinite(value)
    assert metrics["final"]["test_accuracy"] > 0.8 and metrics["final"]["test_accuracy_ema"] > 0.3
    assert f"on the {backend} backend" in "\n".join(lines)
    assert _torch_threads(backend) == threads  # the torch model trains on one thread, then gives the count back
    checkpoint = load_checkpoint(tmp_path / "checkpoint.ckpt")  # the NumPy model's names, shapes and dtypes
    numpy_state = NumpyMLP(polyak.demo.Settings().hidden, seed=0).state()
    assert {k: (a.shape, a.dtype) for k, a in checkpoint.model.items()} == {
        k: (a.shape, a.dtype) for k, a in numpy_state.items()}


@pytest.mark.parametrize("backend", FRAMEWORKS)
def test_the_recipe_spares_the_biases_on_a_framework(backend):
    from polyak.demo.backends import make_model
    from polyak.demo.optimizer import make_optimizer
    from polyak.demo.settings import Settings

    model = make_model(backend, (8,), 0)
    opt = make_optimizer(Settings(), 100, getattr(model, "biases", ()))
    opt.build(model.weights)
    assert [opt._use_weight_decay(w) for w in model.weights] == [True, False, True, False]


@pytest.mark.parametrize("backend", FRAMEWORKS)
def test_resume_on_a_framework_matches_an_uninterrupted_run(tmp_path, backend):
    straight_dir, halves_dir = tmp_path / "straight", tmp_path / "halves"
    straight = _run(straight_dir, epochs=2, batch_size=64, backend=backend)
    first = _run(halves_dir, epochs=2, batch_size=64, backend=backend, stop_after=1)
    assert first["complete"] is False
    resumed = _run(halves_dir, resume=True)
    assert resumed["complete"] is True and resumed["settings"]["backend"] == backend
    a, b = _numbers(straight), _numbers(resumed)
    assert [sorted(e) for e in a] == [sorted(e) for e in b]
    for x, y in zip(a, b):
        for key in x:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), key
    one, two = load_checkpoint(straight_dir / "checkpoint.ckpt"), load_checkpoint(halves_dir / "checkpoint.ckpt")
    assert one.rng_state == two.rng_state
    for name in one.model:  # equal to float32 rounding
        np.testing.assert_allclose(two.model[name], one.model[name], rtol=1e-5, atol=1e-6)
    for key in one.optimizer:
        np.testing.assert_allclose(two.optimizer[key], one.optimizer[key], rtol=1e-5, atol=1e-6)


def test_the_accuracy_panel_shows_every_epoch_the_first_ema_one_included(straight_run):
    from polyak.demo.report import accuracy_limits

    _, metrics = straight_run
    history = [dict(epoch, test_accuracy_ema=0.12) if epoch["epoch"] == 1 else epoch for epoch in metrics["epochs"]]
    history = history + [dict(history[-1], epoch=e) for e in range(len(history) + 1, 31)]  # a long run
    low, high = accuracy_limits(history)
    assert all(low <= e[key] <= high for e in history for key in ("test_accuracy", "test_accuracy_ema"))
