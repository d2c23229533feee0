"""Weight-decay exclusions in a checkpoint, by name, so that a fresh process restores them.

``exclude_from_weight_decay`` takes weights (``var_list``, known by identity, which no file can
hold) and names (``var_names``, a regex search). A checkpoint's metadata entry
``weight_decay_exclusions`` is JSON::

    {"var_list": ["dense/bias"], "var_names_pattern": "bias|norm"}

``var_list``: the paths of the weights excluded by ``var_list``, as the checkpoint's keys name
them (``optimizer/dense/bias/momentum``); ``var_names_pattern``: the regex that ``var_names``
made (null for none). ``load`` matches the weights it is given by those paths.

A file written before this entry existed has none: nothing is restored from it.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

FIELD = "weight_decay_exclusions"


class Exclusions(NamedTuple):
    """What ``load`` restores: the built weights' indices and the names' regex."""

    indices: tuple[int, ...]
    pattern: str | None


def record(optimizer) -> str:
    """The metadata entry for ``optimizer`` (the one that steps: a wrapper's inner optimizer)."""
    paths, pattern = optimizer._stepped()._decay_exclusions()
    return json.dumps({"var_list": paths, "var_names_pattern": pattern})


def read(metadata, path):
    """``(paths, pattern)`` from the file's entry, checked; None when the file has no entry."""
    if FIELD not in metadata:
        return None
    damaged = (f"{path!r} is damaged: its {FIELD!r} entry must be JSON "
               '{"var_list": [distinct paths], "var_names_pattern": a regex or null}.')
    try:
        entry = json.loads(metadata[FIELD])
    except (ValueError, RecursionError):
        raise ValueError(damaged) from None
    if not (isinstance(entry, dict) and set(entry) == {"var_list", "var_names_pattern"}):
        raise ValueError(damaged)
    paths, pattern = entry["var_list"], entry["var_names_pattern"]
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths) and len(set(paths)) == len(paths)):
        raise ValueError(damaged)
    if pattern is not None:
        try:
            re.compile(pattern)
        except (TypeError, re.error):
            raise ValueError(damaged) from None
    return tuple(paths), pattern


def plan(stored, planned):
    """``(exclusions, mismatched)``: what to restore into the optimizer that ``planned`` shows
    built (None: nothing, as the file records none or the optimizer has its own, which it
    keeps), and a ``(key, difference)`` pair for each path that names none of its weights."""
    stepped = planned._stepped()
    if stored is None or stepped._has_decay_exclusions():
        return None, []
    paths, pattern = stored
    position = {p: i for i, p in enumerate(stepped._trainable_paths)} if stepped.built else {}
    mismatched = [(f"weight-decay exclusion {p!r}", "file: excludes the weight of that path (var_list), expected: "
                   "one of the weights to have it") for p in paths if p not in position]
    indices = tuple(position[p] for p in paths if p in position)
    if not indices and pattern is None:
        return None, mismatched
    return Exclusions(indices, pattern), mismatched


def restore(optimizer, exclusions) -> list:
    """Set ``exclusions`` on ``optimizer`` (built as planned); returns the excluded weights."""
    stepped = optimizer._stepped()
    weights = [stepped._trainable_variables[i] for i in exclusions.indices]
    stepped._restore_decay_exclusions(weights, exclusions.pattern)
    return weights
