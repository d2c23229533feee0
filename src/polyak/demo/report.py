"""What a demo run leaves behind: ``metrics.json``, ``training.png`` and a summary.

Each epoch of the history is a dict with ``epoch``, ``learning_rate`` (after the
epoch), the train and test loss and accuracy with the raw weights and with the
EMA weights (``train_loss``, ``train_loss_ema``, ``test_accuracy``,
``test_accuracy_ema``, ...), ``steps`` and the timings ``seconds`` (the whole
epoch), ``train_seconds`` (forward, backward and update) and
``optimizer_seconds`` (inside ``opt.apply``, or on JAX the jitted
``opt.stateless_apply``, alone).
"""

from __future__ import annotations

import json
import math

TIMING_KEYS = ("seconds", "train_seconds", "optimizer_seconds")
EPOCH_KEYS = frozenset({
    "epoch", "learning_rate", "steps", *TIMING_KEYS,
    *(f"{split}_{score}{suffix}" for split in ("train", "test") for score in ("loss", "accuracy")
      for suffix in ("", "_ema")),
})


def check_history(history) -> None:
    """Raise ``ValueError`` unless ``history`` holds epochs 1, 2, ... with every key, as numbers."""
    for number, epoch in enumerate(history, start=1):
        if (not isinstance(epoch, dict) or set(epoch) != EPOCH_KEYS or epoch["epoch"] != number
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in epoch.values())):
            raise ValueError(f"its record of epoch {number} is malformed: {epoch!r}")


def timing(history) -> dict:
    """Seconds per epoch, and steps per second of training and of the optimizer alone."""
    steps = sum(e["steps"] for e in history)
    return {
        "seconds_per_epoch": sum(e["seconds"] for e in history) / len(history),
        "training_steps_per_second": steps / sum(e["train_seconds"] for e in history),
        "optimizer_steps_per_second": steps / sum(e["optimizer_seconds"] for e in history),
        "steps": steps,
    }


def metrics(history, *, settings, model, optimizer_config, data_sizes, complete) -> dict:
    last = history[-1]
    return {
        "complete": complete,
        "settings": settings,
        "model": model,
        "data": data_sizes,
        "optimizer": optimizer_config,
        "final": {k: v for k, v in last.items() if k not in TIMING_KEYS},
        "timing": timing(history),
        "epochs": history,
    }


def write_metrics(path, content: dict) -> None:
    """``content`` as JSON; a NaN or infinity is an error rather than invalid JSON."""
    for epoch in content["epochs"]:
        bad = {k: v for k, v in epoch.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise ValueError(f"epoch {epoch['epoch']} has non-finite metrics {bad}")
    with open(path, "w") as f:
        json.dump(content, f, indent=1, allow_nan=False)
        f.write("\n")


def accuracy_limits(history) -> tuple[float, float]:
    """The accuracy panel's y range: every epoch's raw and EMA test accuracy inside it,
    the EMA's first epochs (still near the initial weights) included."""
    values = [v for e in history for v in (e["test_accuracy"], e["test_accuracy_ema"])]
    return max(0.0, min(values) - 0.02), min(1.0, max(values) + 0.01) + 0.005


def plot(path, history, title) -> None:
    """Training loss (log scale) and test accuracy per epoch, raw vs EMA weights, and
    the learning rate. Drawn with Matplotlib's object API, leaving pyplot's state alone."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    epochs = [e["epoch"] for e in history]
    fig = Figure(figsize=(12, 3.9), layout="constrained")
    loss_ax, accuracy_ax, rate_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.7]})
    styles = {"raw": dict(color="tab:blue", lw=1.8), "ema": dict(color="tab:orange", lw=1.8, ls="--")}

    loss_ax.plot(epochs, [e["train_loss"] for e in history], label="raw weights", **styles["raw"])
    loss_ax.plot(epochs, [e["train_loss_ema"] for e in history], label="EMA weights", **styles["ema"])
    loss_ax.set(yscale="log", title="Training loss (cross-entropy)", xlabel="epoch")

    for key, label in (("test_accuracy", "raw weights"), ("test_accuracy_ema", "EMA weights")):
        style = styles["ema" if key.endswith("ema") else "raw"]
        accuracy_ax.plot(epochs, [e[key] for e in history], label=f"{label}: {history[-1][key]:.1%}", **style)
    accuracy_ax.set(title="Test accuracy", xlabel="epoch")
    accuracy_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    accuracy_ax.set_ylim(*accuracy_limits(history))

    rate_ax.plot(epochs, [e["learning_rate"] for e in history], color="tab:green", lw=1.8, marker=".")
    rate_ax.set(title="Learning rate (end of epoch)", xlabel="epoch")

    for ax in (loss_ax, accuracy_ax, rate_ax):
        ax.grid(alpha=0.3)
    loss_ax.legend()
    accuracy_ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def machine_note() -> list[str]:
    """What in the summary depends on the machine. The matrix products of the model's forward
    and backward passes round as the CPU's BLAS (or torch's, or XLA's) kernels do, which differs
    between CPUs and thread counts; training carries those last bits into every later number."""
    return [
        "  losses and accuracies: alike in every run on this machine; another CPU, BLAS or thread count rounds",
        "  the model's matrix products differently, and training carries that into them (timings vary with the load)",
    ]


def summary(history, *, total_epochs, backend, out_files) -> list[str]:
    """The lines printed at the end of a run."""
    last, t = history[-1], timing(history)
    return [
        f"after {last['epoch']} of {total_epochs} epochs on the {backend} backend:",
        f"  test accuracy      raw weights {last['test_accuracy']:.2%}    EMA weights {last['test_accuracy_ema']:.2%}",
        f"  test loss          raw weights {last['test_loss']:.4f}    EMA weights {last['test_loss_ema']:.4f}",
        f"  time per epoch     {t['seconds_per_epoch']:.3f} s",
        f"  steps per second   {t['training_steps_per_second']:,.0f} training steps (forward, backward, update); "
        f"{t['optimizer_steps_per_second']:,.0f} optimizer steps "
        f"({'jax.jit(opt.stateless_apply)' if backend == 'jax' else 'opt.apply'} alone)",
        *machine_note(),
        "  wrote " + ", ".join(str(p) for p in out_files),
    ]
