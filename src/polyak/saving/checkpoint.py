"""``save`` and ``load``: an optimizer's whole state in one file, restored exactly or not at all.

A checkpoint holds the optimizer's config (Keras's serialized dict, as JSON),
every optimizer variable under a stable key (see :mod:`polyak.saving.names`),
the keys in ``optimizer.variables`` order (so Keras's positional store can be
rebuilt: :func:`keras_store`), the weight-decay exclusions by name (see
:mod:`polyak.saving.exclusions`), and optionally the weights' values by path.

Loading is all or nothing: the file is read and checked in full, the
optimizer's variables are planned, and every name, shape and dtype compared,
before anything is written. With ``strict=False`` the matching entries load and
the rest is reported in a :class:`CheckpointMismatchWarning`.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import TYPE_CHECKING, Any, Sequence, TypeVar, overload

import numpy as np

from polyak import serialization, validation
from polyak.backends import backend_for, dtype_name
from polyak.optimizers import parameters
from polyak.optimizers.base import Optimizer
from polyak.saving import exclusions, files, names

if TYPE_CHECKING:
    from polyak.annotations import Path
    from polyak.torch_face.sgd import SGD as TorchSGD

_Loaded = TypeVar("_Loaded", bound="Optimizer | TorchSGD")


class CheckpointMismatch:
    """What did not match between a checkpoint and its target: key lists, and for
    ``mismatched`` pairs of ``(key, "file: ..., expected: ...")``."""

    def __init__(self, path, missing=(), unexpected=(), mismatched=(), hint=""):
        self.path = path
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)
        self.hint = hint

    def __bool__(self):
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self, outcome):
        lines = [f"Checkpoint {self.path!r} does not match its target. {outcome}"]
        if self.missing:
            lines.append(f"  missing (expected, not in the file): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (in the file, not expected): {', '.join(self.unexpected)}")
        for key, difference in self.mismatched:
            lines.append(f"  mismatched {key}: {difference}")
        if self.hint:
            lines.append(f"  {self.hint}")
        return "\n".join(lines)


class CheckpointMismatchError(ValueError):
    """``load(strict=True)`` refused a checkpoint; ``.mismatch`` says why. Nothing was changed."""

    def __init__(self, mismatch: CheckpointMismatch):
        super().__init__(mismatch.describe("Nothing was loaded."))
        self.mismatch = mismatch


class CheckpointMismatchWarning(UserWarning):
    """``load(strict=False)`` loaded the matching entries only; ``.mismatch`` lists the rest."""

    def __init__(self, mismatch: CheckpointMismatch):
        super().__init__(mismatch.describe("Only the matching entries were loaded (strict=False)."))
        self.mismatch = mismatch


# --- arrays in and out: the one place that converts --------------------------------------
def to_numpy(value):
    """A contiguous NumPy copy of a Variable or backend array (what the file stores)."""
    value = parameters.value_of(value)
    return np.array(backend_for([value]).to_numpy(value), copy=True, order="C")


def check_whole(pairs, action):
    """Refuse state sharded over ranks (a DTensor, FSDP2's): one file holds whole arrays only."""
    for key, value in pairs:
        value = parameters.value_of(value)
        if type(value).__name__ == "DTensor" and type(value).__module__.startswith("torch.distributed"):
            raise ValueError(
                f"`polyak.{action}` reads and writes whole arrays, and {key!r} is a DTensor sharded over ranks "
                f"(placements {tuple(value.placements)}). Checkpoint sharded state with "
                "torch.distributed.checkpoint (`get_optimizer_state_dict` with `polyak.torch.SGD`), which saves "
                "and loads it on any number of ranks."
            )


def assign(target, array):
    """Write a NumPy ``array`` into a Variable or a user's array, through its backend."""
    parameters.write(target, array)


# --- save ----------------------------------------------------------------------------------
def _check_path(path):
    try:
        path = os.fspath(path)
    except TypeError:
        validation.fail("path", path, "a str or os.PathLike", TypeError)
    if not isinstance(path, str):
        validation.fail("path", path, "a str or os.PathLike of str", TypeError)
    return path


def _check_optimizer(optimizer):
    """``optimizer``, or for a face (``polyak.torch.SGD``) the polyak optimizer it holds."""
    held = getattr(optimizer, "_checkpoint_optimizer", None)
    if callable(held):
        optimizer = held()
    if not isinstance(optimizer, Optimizer):
        validation.fail("optimizer", optimizer, "a polyak Optimizer or polyak.torch.SGD", TypeError)
    return optimizer


def _check_weights(weights, argument):
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        validation.fail(argument, weights, "a list of weights (polyak.Variable or arrays)", TypeError)
    weights = list(weights)
    for i, w in enumerate(weights):
        value = parameters.value_of(w)
        if not backend_for([value]).owns(value):
            validation.fail(f"{argument}[{i}]", w, "a polyak.Variable or an array", TypeError)
    return weights


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def save(path: Path, optimizer: Optimizer | TorchSGD, variables: Sequence[Any] | None = None) -> None:
    """Write ``optimizer`` (config and every variable) and, if given, the weights'
    values to one safetensors file at ``path``, atomically.

    Args:
        path: the file to write, replaced whole, never partially; a symlink (or a chain of
            them, or a dangling one) is kept and the file it leads to is replaced.
        optimizer: a polyak optimizer (or ``polyak.torch.SGD``: the state it holds, keyed
            by its parameters' names, and its class and options, per param group); a polyak
            optimizer's learning rate must be serializable (a float or a schedule, not a bare
            callable).
        variables: optionally, weights whose values to store, keyed by path.

    The weight-decay exclusions are recorded by name (:mod:`polyak.saving.exclusions`); an
    unbuilt optimizer that excludes weights by ``var_list`` cannot name them and is refused.
    Raises ``ValueError``/``TypeError`` before touching the disk if anything
    cannot be saved, a path that is a directory, a device or a FIFO included
    (``FileNotFoundError`` if its directory does not exist). Whatever interrupts
    it (an ``OSError``, a ``KeyboardInterrupt``), the call either raises with
    the old file untouched and no temporary file left, or returns with the new
    file in place (see :mod:`polyak.saving.atomic`).
    """
    path = _check_path(path)
    face, optimizer = optimizer, _check_optimizer(optimizer)
    variables = _check_weights(variables, "variables")
    own_config = getattr(face, "_checkpoint_config", None)  # a face records its own class and options
    config = own_config() if callable(own_config) else serialization.serialize(optimizer)
    try:
        config_json = json.dumps(config, default=_json_default)
    except (TypeError, ValueError) as error:
        raise ValueError(f"The config of optimizer '{optimizer.name}' is not JSON-serializable: {error}") from None
    optimizer_keys = names.optimizer_keys(optimizer)
    excluded = exclusions.record(optimizer)
    weight_keys = names.weight_keys(variables) if variables is not None else []
    check_whole(zip(optimizer_keys, optimizer.variables), "save")
    check_whole(zip(weight_keys, variables or ()), "save")
    tensors = {key: to_numpy(v) for key, v in zip(optimizer_keys, optimizer.variables)}
    tensors.update({key: to_numpy(w) for key, w in zip(weight_keys, variables or ())})
    metadata = {
        "config": config_json,
        "optimizer_variables": json.dumps(optimizer_keys),
        "variables": json.dumps(weight_keys),
        exclusions.FIELD: excluded,
    }
    files.write(path, tensors, metadata)


# --- load ----------------------------------------------------------------------------------
def _json_field(metadata, field, path):
    try:
        return json.loads(metadata.get(field, ""))
    except (ValueError, RecursionError):
        raise ValueError(f"{path!r} is damaged: its {field!r} entry is not valid JSON.") from None


def _key_list(metadata, field, prefix, path):
    keys = _json_field(metadata, field, path)
    if not (isinstance(keys, list) and all(isinstance(k, str) and k.startswith(prefix) for k in keys)
            and len(set(keys)) == len(keys)):
        raise ValueError(f"{path!r} is damaged: {field!r} must list distinct keys starting with {prefix!r}.")
    return keys


def _stored_layout(tensors, metadata, path):
    """``(optimizer keys in Keras order, weight keys)`` after checking they list the file exactly."""
    optimizer_keys = _key_list(metadata, "optimizer_variables", names.OPTIMIZER, path)
    weight_keys = _key_list(metadata, "variables", names.WEIGHTS, path)
    if set(optimizer_keys) | set(weight_keys) != set(tensors):
        raise ValueError(f"{path!r} is damaged: its arrays are not the ones its metadata lists.")
    return optimizer_keys, weight_keys


#: the module a ``polyak.torch.SGD``'s config names (``polyak.torch_face.config``)
TORCH_FACE = "polyak.torch"
#: the class that earlier checkpoints of that face named (the private optimizer inside it)
_EARLIER_TORCH_FACE = "_GroupedSGD"


def _refuse_torch_face(config, path):
    """A ``polyak.torch.SGD``'s param groups hold the parameters, which a file does not: refuse
    to make one from its config, saying what to pass instead."""
    if not isinstance(config, dict) or (config.get("module") != TORCH_FACE
                                        and config.get("class_name") != _EARLIER_TORCH_FACE):
        return
    inner = config.get("config")
    groups = inner.get("param_groups") if isinstance(inner, dict) else None
    count = f" with {len(groups)} param group{'s' * (len(groups) != 1)}" if isinstance(groups, list) else ""
    raise ValueError(
        f"{path!r} holds the state of a polyak.torch.SGD{count}, whose param groups hold the parameters "
        "themselves, which a checkpoint does not. Make the optimizer on the parameters as it was made, then "
        "pass it as `optimizer=`: `polyak.load(path, optimizer=polyak.torch.SGD(model.named_parameters(), "
        "...), variables=...)`."
    )


def _optimizer_from_config(metadata, path):
    config = _json_field(metadata, "config", path)
    _refuse_torch_face(config, path)
    return serialization.deserialize("optimizer", config)


def _unbuilt_copy(optimizer):
    """A shallow copy of an unbuilt ``optimizer`` that ``build`` can run on without touching
    the original: ``build`` rebinds attributes and adds to ``_variables``, of which the copy
    gets its own list, and builds any optimizer it wraps (a ``LossScaleOptimizer``'s inner
    optimizer), of which the copy gets its own copy."""
    probe = copy.copy(optimizer)
    probe._variables = list(optimizer._variables)
    for attribute, value in vars(optimizer).items():
        if isinstance(value, Optimizer) and not value.built:
            setattr(probe, attribute, _unbuilt_copy(value))
    return probe


def _as_built(optimizer, weights):
    """``optimizer`` as it will be once built on ``weights``: a built copy, so the original
    is left as it is until everything is known to match."""
    if optimizer.built or weights is None:
        return optimizer
    probe = _unbuilt_copy(optimizer)
    probe.build(weights)
    return probe


def _describe(array):
    return f"{dtype_name(array.dtype)} {tuple(array.shape)}"


def _same_dtype(stored, wanted):
    """Equal dtypes (of any backend); integer counters may differ in width, as JAX's is int32
    without ``jax_enable_x64``."""
    stored, wanted = dtype_name(stored), dtype_name(wanted)
    return stored == wanted or (stored.startswith("int") and wanted.startswith("int"))


def _compare(expected, tensors, path, hint=""):
    """The mismatch between ``expected`` (key -> variable) and the file's ``tensors``."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = []
    for key, target in expected.items():
        if key in tensors:
            stored, wanted = tensors[key], parameters.value_of(target)
            same = tuple(stored.shape) == tuple(wanted.shape) and _same_dtype(stored.dtype, wanted.dtype)
            if not same:
                mismatched.append((key, f"file has {_describe(stored)}, expected {_describe(wanted)}"))
    return CheckpointMismatch(path, missing, unexpected, mismatched, hint if unexpected else "")


def _check_scalars(tensors, path):
    """Counters are integers >= 0 and a stored learning rate is finite and >= 0, as the
    constructor would require; the rest is data."""
    for key in (names.OPTIMIZER + "iteration", names.OPTIMIZER + "skipped_steps"):
        if key in tensors and (tensors[key].dtype.kind not in "iu" or np.any(tensors[key] < 0)):
            raise ValueError(f"{path!r} holds an invalid {key}: {tensors[key]!r} (a count must be an integer >= 0).")
    rate = tensors.get(names.OPTIMIZER + "learning_rate")
    if rate is not None and not (rate.dtype.kind == "f" and np.all(np.isfinite(rate)) and np.all(rate >= 0)):
        raise ValueError(f"{path!r} holds an invalid learning rate: {rate!r} (it must be finite and >= 0).")


@overload
def load(path: Path, optimizer: None = None, variables: Sequence[Any] | None = None,
         strict: bool = True) -> Optimizer: ...


@overload
def load(path: Path, optimizer: _Loaded, variables: Sequence[Any] | None = None, strict: bool = True) -> _Loaded: ...


def load(path: Path, optimizer: Optimizer | TorchSGD | None = None, variables: Sequence[Any] | None = None,
         strict: bool = True) -> Optimizer | TorchSGD:
    """Restore a checkpoint written by :func:`save`; returns the optimizer.

    Args:
        path: the checkpoint file.
        optimizer: the optimizer to restore into: its hyperparameters are kept
            and its variables loaded (a float learning rate is one, as in Keras).
            None: a new one is made from the stored config; only polyak's and
            registered classes can be made (not a ``polyak.torch.SGD``, whose param groups
            hold the parameters: a ``ValueError`` says to pass it). A ``polyak.torch.SGD`` takes the state
            and its groups' current options (``lr`` and ``momentum`` as its schedulers left them,
            as torch's ``load_state_dict`` does); its groups must be as many and as large.
            The weight-decay exclusions the file records (by weight path and name pattern) are
            restored into an optimizer that has none of its own; one that has its own keeps them.
        variables: the weights. An unbuilt optimizer is built on them; if the
            file holds weight values, they are loaded into them by path.
        strict: every name, shape and dtype must match, else a
            :class:`CheckpointMismatchError` (a ``ValueError``) lists what is
            missing, unexpected and mismatched, and nothing changes. False:
            load the matching entries and warn about the rest.

    Raises ``FileNotFoundError`` if there is no file at ``path``, and for
    whatever else it refuses (a directory, a device, a FIFO, an unreadable
    file, a file that is not a polyak checkpoint or is damaged) a
    ``ValueError`` naming ``path`` and what was found; nothing is changed.
    """
    path = _check_path(path)
    strict = validation.boolean("strict", strict)
    given = optimizer
    if optimizer is not None:
        optimizer = _check_optimizer(optimizer)
    if variables is not None:
        variables = parameters.check_parameters(_check_weights(variables, "variables"))
    tensors, metadata = files.read(path)
    optimizer_keys, weight_keys = _stored_layout(tensors, metadata, path)
    _check_scalars(tensors, path)
    stored_exclusions = exclusions.read(metadata, path)
    target = optimizer if optimizer is not None else _optimizer_from_config(metadata, path)
    face_plan = getattr(given, "_checkpoint_plan", None)  # a face's own settings (the torch face's groups)
    face_mismatched, face_updates = face_plan(_json_field(metadata, "config", path), path) if callable(
        face_plan) else ([], None)

    planned = _as_built(target, variables)
    expected = dict(zip(names.optimizer_keys(planned), planned.variables))
    if variables is not None and weight_keys:
        expected.update(zip(names.weight_keys(variables), variables))
    relevant = {k: v for k, v in tensors.items() if k.startswith(names.OPTIMIZER) or variables is not None}
    hint = "" if planned.built else "The optimizer is not built: pass `variables` to build it on the weights."
    mismatch = _compare(expected, relevant, path, hint)
    excluding, unmatched = exclusions.plan(stored_exclusions, planned)
    mismatch.mismatched += (*unmatched, *face_mismatched)
    if mismatch and strict:
        raise CheckpointMismatchError(mismatch)

    if planned is not target:
        target.build(variables)
        expected = dict(zip(names.optimizer_keys(target), target.variables))
        if weight_keys:
            expected.update(zip(names.weight_keys(variables), variables))
    check_whole(expected.items(), "load")
    skipped = {k for k, _ in mismatch.mismatched}
    for key, destination in expected.items():
        if key in relevant and key not in skipped:
            assign(destination, relevant[key])
    excluded = None if excluding is None else (exclusions.restore(target, excluding), excluding.pattern)
    if given is not None and given is not target:
        given._checkpoint_loaded(face_updates, excluded)
    if mismatch:
        warnings.warn(CheckpointMismatchWarning(mismatch), stacklevel=2)
    return target if given is None else given


def keras_store(path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's optimizer variables as Keras's positional store
    (``{"0": iteration, "1": ...}`` in ``variables`` order), for ``load_own_variables``."""
    tensors, metadata = files.read(_check_path(path))
    optimizer_keys, _ = _stored_layout(tensors, metadata, path)
    return {str(i): tensors[key] for i, key in enumerate(optimizer_keys)}
