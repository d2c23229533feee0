"""Checkpoint files: ``save`` and ``load`` an optimizer's whole state, atomically and strictly."""

from polyak.saving.checkpoint import (
    CheckpointMismatch,
    CheckpointMismatchError,
    CheckpointMismatchWarning,
    keras_store,
    load,
    save,
)
from polyak.saving.paths import CheckpointFileError

__all__ = ["save", "load", "keras_store", "CheckpointMismatch", "CheckpointMismatchError",
           "CheckpointMismatchWarning", "CheckpointFileError"]
