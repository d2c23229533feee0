"""The demo's checkpoint: a ``polyak.save`` file and the run's progress beside it.

``checkpoint.ckpt`` is what :func:`polyak.save` writes: the optimizer's config
and variables, and the model's weights under their names, so
``polyak.load("polyak-demo/checkpoint.ckpt")`` reads it like any other.
``checkpoint.progress.json`` holds what the optimizer does not: the run's
settings, the epochs' metrics so far and the shuffling generator's state, with
the optimizer's step count, so a resume checks that the two files belong
together. Each file is written under a temporary name and renamed over the old
one, so a run killed while saving leaves whole files (and, between the two
renames, a pair the resume refuses rather than mixes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

import polyak
from polyak.demo.errors import DemoError

FORMAT = "polyak-demo-progress/2"


@dataclasses.dataclass
class Progress:
    settings: dict
    history: list
    rng_state: dict
    iterations: int  # the optimizer's step count when the checkpoint was written


def progress_path(path) -> Path:
    """``checkpoint.progress.json`` for ``checkpoint.ckpt``."""
    path = Path(path)
    return path.with_name(path.stem + ".progress.json")


def _write_atomically(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _named_weights(model) -> list:
    """The model's weights as NumPy ``polyak.Variable``s named as the model names them."""
    return [polyak.Variable(np.asarray(array), name=name) for name, array in model.state().items()]


def save_checkpoint(path, opt, model, progress: Progress) -> None:
    """Write the optimizer and the model with ``polyak.save``, then the progress file."""
    path = Path(path)
    polyak.save(path, opt, _named_weights(model))  # itself written atomically

    def write_json(temporary):
        with open(temporary, "w") as f:
            json.dump({"format": FORMAT, **dataclasses.asdict(progress)}, f)
            f.flush()
            os.fsync(f.fileno())

    _write_atomically(progress_path(path), write_json)


def load_progress(path) -> Progress:
    """The progress file beside the checkpoint at ``path``; missing or unreadable: ``DemoError``."""
    path = Path(path)
    if not path.is_file():
        raise DemoError(f"no checkpoint to resume at {str(path)!r}: run `polyak demo` without --resume first")
    side = progress_path(path)
    try:
        content = json.loads(side.read_text())
        if not isinstance(content, dict) or content.pop("format", None) != FORMAT:
            raise ValueError(f"its format is not {FORMAT}")
        progress = Progress(**content)
        if not isinstance(progress.history, list) or not isinstance(progress.rng_state, dict):
            raise ValueError("its history or generator state is malformed")
        if not isinstance(progress.settings, dict):
            raise ValueError("its settings are malformed")
        if isinstance(progress.iterations, bool) or not isinstance(progress.iterations, int):
            raise ValueError("its step count is malformed")
    except (OSError, ValueError, TypeError) as error:
        raise _unreadable(path, f"{side.name}: {error or type(error).__name__}") from None
    return progress


def restore(path, opt, model, progress: Progress) -> None:
    """Load the checkpoint at ``path`` into ``opt`` and ``model`` with ``polyak.load``;
    all or nothing: a file that does not fit raises ``DemoError`` and changes nothing."""
    weights = [polyak.Variable(np.zeros_like(v.numpy()), name=v.name) for v in _named_weights(model)]
    try:
        polyak.load(path, opt, weights)
    except (ValueError, TypeError, OSError) as error:
        reason = "; ".join(line.strip() for line in str(error).splitlines())
        raise DemoError(f"the checkpoint {str(path)!r} cannot be restored into this run: {reason}") from None
    model.load_state({w.name: w.numpy() for w in weights})
    if int(opt.iterations.numpy()) != progress.iterations:
        raise DemoError(
            f"the checkpoint {str(path)!r} holds step {int(opt.iterations.numpy())} but its progress file "
            f"{str(progress_path(path))!r} step {progress.iterations} (a run killed between writing the two?); "
            "run without --resume to start afresh"
        )


def _unreadable(path, reason) -> DemoError:
    return DemoError(
        f"{str(path)!r} is not a readable polyak demo checkpoint ({reason}); "
        "delete it, or run without --resume to start afresh"
    )
