"""``run``: the demo's training job, from its settings (or a checkpoint) to its report."""

from __future__ import annotations

import importlib.util
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from polyak.demo import report
from polyak.demo.backends import make_model
from polyak.demo.checkpoint import Progress, load_progress, restore, save_checkpoint
from polyak.demo.data import load_digits
from polyak.demo.errors import DemoError
from polyak.demo.optimizer import make_optimizer
from polyak.demo.settings import Settings

CHECKPOINT, METRICS, FIGURE = "checkpoint.ckpt", "metrics.json", "training.png"
_PACKAGES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}


def run(out="polyak-demo", *, resume=None, stop_after=None, progress=True, echo=print, **options) -> dict:
    """Train the demo MLP and write ``checkpoint.ckpt`` (with ``checkpoint.progress.json``), ``metrics.json`` and ``training.png`` under ``out``.

    Args:
        out: the output directory, created if needed.
        resume: ``None`` to start afresh; ``True`` to continue from ``out``'s
            checkpoint, or the path of a checkpoint. The run keeps the settings
            it started with and ends with the same numbers as an uninterrupted run.
        stop_after: stop after this many epochs (the checkpoint lets a later
            ``resume`` finish the run).
        progress: show a progress bar per epoch.
        echo: prints the header and summary lines.
        **options: ``Settings`` fields to change (``epochs``, ``batch_size``,
            ``seed``, ``backend``); ``None`` means "not given".

    Returns:
        The content of ``metrics.json``. Raises ``DemoError`` on a user error,
        before anything is written.
    """
    _require_packages()
    out = Path(out)
    settings, checkpoint, resume_path = _settings(out, resume, options)
    if stop_after is not None and (not isinstance(stop_after, int) or stop_after < 1):
        raise DemoError(f"--stop-after must be a positive number of epochs. Received: {stop_after!r}")
    init_seed, shuffle_seed = np.random.SeedSequence(settings.seed).spawn(2)
    model = make_model(settings.backend, settings.hidden, init_seed)
    try:
        return _train(out, settings, (checkpoint, resume_path), model, shuffle_seed, stop_after, progress, echo)
    finally:
        close = getattr(model, "close", None)  # e.g. torch: its thread count back as it was
        if close is not None:
            close()


def _train(out, settings, resume_from, model, shuffle_seed, stop_after, progress, echo) -> dict:
    checkpoint, resume_path = resume_from
    data = load_digits()
    steps_per_epoch = math.ceil(len(data.y_train) / settings.batch_size)
    try:
        opt = make_optimizer(settings, settings.epochs * steps_per_epoch, getattr(model, "biases", ()))
    except (ValueError, TypeError) as error:  # settings read from a checkpoint are not checked field by field
        raise DemoError(f"the settings do not make an optimizer: {error}") from None
    opt.build(model.weights)
    rng = np.random.default_rng(shuffle_seed)
    history = [] if checkpoint is None else _restore(resume_path, checkpoint, settings, model, opt, rng)
    _check_writable(out)

    title = (f"polyak demo: an MLP {'-'.join(map(str, model.sizes))} on scikit-learn's digits\n"
             f"SGD(momentum={settings.momentum}, nesterov=True), cosine decay with warmup, weight decay "
             f"(not on biases), global_clipnorm={settings.global_clipnorm}, EMA")
    echo(f"{title}\n{model.parameter_count:,} weights, {len(data.y_train):,} training and {len(data.y_test):,} "
         f"test images, {settings.epochs} epochs of {steps_per_epoch} steps, {settings.backend} backend"
         + (f"; resuming after epoch {len(history)}" if history else ""))
    resume_command = "polyak demo --resume" + ("" if out == Path("polyak-demo") else f" --out {out}")
    last = settings.epochs if stop_after is None else min(settings.epochs, stop_after)
    epoch = len(history) + 1
    try:
        for epoch in range(len(history) + 1, last + 1):
            history.append(_epoch(epoch, settings, model, opt, data, rng, progress))
            save_checkpoint(out / CHECKPOINT, opt, model, Progress(
                settings.to_dict(), history, rng.bit_generator.state, int(opt.iterations.numpy())))
    except KeyboardInterrupt:
        print(f"interrupted in epoch {epoch}; " + (
            f"{out / CHECKPOINT} holds epochs 1-{epoch - 1}: `{resume_command}` continues" if epoch > 1
            else "no epoch was completed, there is nothing to resume"), file=sys.stderr)
        raise

    content = report.metrics(
        history, settings=settings.to_dict(), optimizer_config=opt.get_config(),
        complete=len(history) == settings.epochs, model={"layers": model.sizes, "weights": model.parameter_count},
        data_sizes={"train": len(data.y_train), "test": len(data.y_test)},
    )
    report.write_metrics(out / METRICS, content)
    report.plot(out / FIGURE, history, title)
    for line in report.summary(history, total_epochs=settings.epochs, backend=settings.backend,
                               out_files=[out / FIGURE, out / METRICS, out / CHECKPOINT]):
        echo(line)
    if len(history) < settings.epochs:
        echo(f"stopped after epoch {len(history)} of {settings.epochs}: `{resume_command}` continues the run")
    return content


def _settings(out: Path, resume, options) -> tuple[Settings, Progress | None, Path | None]:
    """A fresh run's settings (defaults changed by ``options``), or a checkpoint's, its progress and its path."""
    if resume is None:
        return Settings().with_options(**options), None, None
    path = out / CHECKPOINT if resume is True else Path(resume)
    checkpoint = load_progress(path)
    try:
        settings = Settings.from_dict(checkpoint.settings)
        report.check_history(checkpoint.history)
    except (DemoError, ValueError) as error:
        raise DemoError(f"the checkpoint {str(path)!r} does not hold a demo run: {error}") from None
    settings.check_options(**options)
    return settings, checkpoint, path


def _require_packages():
    missing = [name for module, name in _PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise DemoError(f"polyak demo needs {', '.join(missing)}: python -m pip install \"polyak[demo]\"")


def _check_writable(out: Path):
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise DemoError(f"cannot write to --out {str(out)!r}: {error.strerror or error}") from None


def _restore(path: Path, checkpoint: Progress, settings, model, opt, rng) -> list:
    """Load the checkpoint into the model, optimizer and generator; return its history."""
    if len(checkpoint.history) > settings.epochs:
        raise DemoError(f"the checkpoint holds {len(checkpoint.history)} epochs of a {settings.epochs}-epoch run")
    try:
        generator_state = dict(checkpoint.rng_state)
        probe = np.random.default_rng()
        probe.bit_generator.state = generator_state
    except (ValueError, TypeError, KeyError) as error:
        raise DemoError(f"the checkpoint's generator state does not fit this run: {error}") from None
    restore(path, opt, model, checkpoint)
    rng.bit_generator.state = generator_state
    return list(checkpoint.history)


def _epoch(epoch, settings, model, opt, data, rng, progress) -> dict:
    """One pass over the shuffled training set, then the evaluations; the epoch's record."""
    from tqdm.auto import tqdm

    n = len(data.y_train)
    steps = math.ceil(n / settings.batch_size)
    width = len(str(settings.epochs))
    start = time.perf_counter()
    with tqdm(total=steps, desc=f"epoch {epoch:>{width}}/{settings.epochs}", unit="step", disable=not progress,
              leave=True, dynamic_ncols=True) as bar:
        order = rng.permutation(n)
        loss_sum, correct, optimizer_seconds = 0.0, 0, 0.0
        for begin in range(0, n, settings.batch_size):
            batch = order[begin:begin + settings.batch_size]
            loss, right, grads = model.loss_and_grads(data.x_train[batch], data.y_train[batch])
            tick = time.perf_counter()
            model.apply_gradients(opt, grads)
            optimizer_seconds += time.perf_counter() - tick
            loss_sum += loss * len(batch)
            correct += right
            seen = begin + len(batch)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", accuracy=f"{correct / seen:.1%}", refresh=False)
            bar.update()
        train_seconds = time.perf_counter() - start
        record = {"epoch": epoch, "learning_rate": float(opt.learning_rate), **_evaluate(model, opt, data)}
        bar.set_postfix(loss=f"{loss_sum / n:.4f}", accuracy=f"{correct / n:.1%}",
                        test=f"{record['test_accuracy']:.1%}", test_ema=f"{record['test_accuracy_ema']:.1%}")
    record.update(steps=steps, seconds=time.perf_counter() - start, train_seconds=train_seconds,
                  optimizer_seconds=optimizer_seconds)
    return record


def _evaluate(model, opt, data) -> dict:
    """Loss and accuracy on both sets, with the raw weights, then with the EMA weights."""
    record = _scores(model, data, suffix="")
    with opt.ema_weights(model.weights):
        record.update(_scores(model, data, suffix="_ema"))
    return record


def _scores(model, data, suffix) -> dict:
    scores = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        scores[f"{split}_loss{suffix}"], scores[f"{split}_accuracy{suffix}"] = model.evaluate(x, y)
    return scores
