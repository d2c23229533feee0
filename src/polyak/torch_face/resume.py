"""Resuming a ``polyak.torch.SGD`` through ``polyak.load``: its groups' current options and its
weight-decay exclusions, as torch's ``load_state_dict`` restores the groups.

The checkpoint's config (:func:`polyak.torch_face.config.checkpoint_config`) records each
group's ``lr`` as its schedulers left it, ``momentum``, ``nesterov``, ``weight_decay`` and its
``other_keys``. ``plan`` checks them against the face's groups (as many, as large; a float rate
where the face has a float, a schedule where it has a schedule; every value one the group would
take) before anything changes; ``restore`` writes them. A file written before groups were
recorded restores none: the groups keep what they were made with.
"""

from __future__ import annotations

import torch

from polyak.torch_face import config as config_mod
from polyak.torch_face import groups as groups_mod

_RECORDED = ("momentum", "nesterov", "weight_decay")


def _damaged(path, detail):
    return ValueError(f"{path!r} is damaged: its config's param_groups {detail}.")


def _saved_groups(config, path):
    """The recorded groups, or None when the file records none (an earlier one's, or not this face's)."""
    inner = config.get("config") if isinstance(config, dict) and config.get("module") == config_mod.MODULE else None
    saved = inner.get("param_groups") if isinstance(inner, dict) else None
    if saved is None:
        return None
    if not (isinstance(saved, list) and all(isinstance(g, dict) and {"lr", "params", *_RECORDED} <= set(g)
                                            for g in saved)):
        raise _damaged(path, "must be a list of groups, each with lr, momentum, nesterov, weight_decay and params")
    return saved


def _update(face, k, group, entry, path):
    """``(update, mismatched)`` for group ``k`` from its record ``entry``."""
    others = entry.get("other_keys", {})
    if not isinstance(others, dict):
        raise _damaged(path, f"[{k}]['other_keys'] must be a dict")
    update = {key: value for key, value in others.items() if key not in config_mod.OWN_KEYS}
    update.update({key: entry[key] for key in _RECORDED})
    if update["weight_decay"] is None and not group["weight_decay"]:
        del update["weight_decay"]  # excluded either way: the group keeps its own 0 or None
    mismatched = []
    scheduled_here, scheduled_there = k in face._schedules, isinstance(entry["lr"], dict)
    if scheduled_here != scheduled_there:
        kinds = ("a schedule or callable", "a float")
        mismatched.append((groups_mod.name(k, "lr"), f"file: {kinds[not scheduled_there]}, "
                                                     f"expected: {kinds[not scheduled_here]}"))
    elif not scheduled_here:
        update["lr"] = entry["lr"]
    try:
        groups_mod.checked(dict(group, **update), k, face._schedules.get(k))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!r} holds options for param group {k} that it refuses: {error}") from None
    return update, mismatched


def plan(face, config, path):
    """``(mismatched, updates)``: ``(key, difference)`` pairs for what does not match, and per group
    the keys to write (None: the groups stay as they are)."""
    saved = _saved_groups(config, path)
    if saved is None:
        return [], None
    sizes = [len(g["params"]) for g in face.param_groups]
    saved_sizes = [g["params"] for g in saved]
    if saved_sizes != sizes:
        return [("param_groups", f"file: {len(saved)} group(s) of {saved_sizes} parameters, expected: "
                                 f"{len(sizes)} of {sizes}")], None
    updates, mismatched = [], []
    for k, (group, entry) in enumerate(zip(face.param_groups, saved)):
        update, different = _update(face, k, group, entry, path)
        updates.append(update)
        mismatched += different
    return mismatched, updates


def restore(face, updates, excluded):
    """Write the planned group ``updates`` (a tensor ``lr`` stays a tensor) and the restored
    exclusions ``(weights, pattern)``, which the face keeps for its next builds."""
    for group, update in zip(face.param_groups, updates or ()):
        for key, value in update.items():
            if key == "lr" and isinstance(group["lr"], torch.Tensor):
                value = torch.full_like(group["lr"], value)
            group[key] = value
    if excluded is not None:
        weights, pattern = excluded
        face._excluded = (tuple(weights), () if pattern is None else (pattern,))
    face._has_state = True
