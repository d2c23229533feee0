"""The demo's checkpoint: one ``.npz`` file, read back without pickle.

It holds the run's settings, the epochs' metrics so far and the shuffling
generator's state (each as JSON text), the model weights under ``model/<name>``
and the optimizer's ``save_own_variables`` store under ``optimizer/<i>``. The
file is written to a temporary name and renamed over the old one, so a run
killed while saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from polyak.demo.errors import DemoError

FORMAT = "polyak-demo-checkpoint/1"
_MODEL, _OPTIMIZER = "model/", "optimizer/"


@dataclasses.dataclass
class Checkpoint:
    settings: dict
    history: list
    rng_state: dict
    model: dict  # weight name -> array
    optimizer: dict  # "0", "1", ... -> array, as ``save_own_variables`` writes


def save_checkpoint(path, checkpoint: Checkpoint) -> None:
    path = Path(path)
    arrays = {
        "format": np.array(FORMAT),
        "settings": np.array(json.dumps(checkpoint.settings)),
        "history": np.array(json.dumps(checkpoint.history)),
        "rng_state": np.array(json.dumps(checkpoint.rng_state)),
    }
    arrays.update({_MODEL + name: np.asarray(a) for name, a in checkpoint.model.items()})
    arrays.update({_OPTIMIZER + key: np.asarray(a) for key, a in checkpoint.optimizer.items()})
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def load_checkpoint(path) -> Checkpoint:
    """The checkpoint at ``path``; a missing or unreadable file raises ``DemoError``."""
    path = Path(path)
    if not path.is_file():
        raise DemoError(f"no checkpoint to resume at {str(path)!r}: run `polyak demo` without --resume first")
    try:
        if not zipfile.is_zipfile(path):
            raise ValueError("it is not an .npz file")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        if str(arrays.pop("format")) != FORMAT:
            raise ValueError(f"its format is not {FORMAT}")
        texts = {key: json.loads(str(arrays.pop(key))) for key in ("settings", "history", "rng_state")}
        if not isinstance(texts["history"], list) or not isinstance(texts["rng_state"], dict):
            raise ValueError("its history or generator state is malformed")
        model = {k[len(_MODEL):]: a for k, a in arrays.items() if k.startswith(_MODEL)}
        optimizer = {k[len(_OPTIMIZER):]: a for k, a in arrays.items() if k.startswith(_OPTIMIZER)}
        if len(model) + len(optimizer) != len(arrays):
            raise ValueError(f"it holds unexpected entries {sorted(set(arrays) - set(model) - set(optimizer))}")
    except KeyError as error:
        raise _unreadable(path, f"it has no entry {error}") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise _unreadable(path, str(error) or type(error).__name__) from None
    return Checkpoint(texts["settings"], texts["history"], texts["rng_state"], model, optimizer)


def _unreadable(path, reason) -> DemoError:
    return DemoError(
        f"{str(path)!r} is not a readable polyak demo checkpoint ({reason}); "
        "delete it, or run without --resume to start afresh"
    )
