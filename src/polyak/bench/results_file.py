"""Where ``--json`` writes a run's results: a new file, unless told to overwrite one.

A results file that a repository tracks (``benchmarks/results/cpu-2core.json``)
is the record of one run; a second run must not silently replace it. So
``--json DIR`` writes a new, timestamped file in ``DIR``, and ``--json FILE``
refuses a ``FILE`` that exists unless ``--force`` is given. Both are decided
before the run, so that a long run is never lost to a bad path at its end.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path


class ResultsPathError(ValueError):
    """``--json``'s path cannot take this run's results."""


def timestamped_name(now: datetime.datetime) -> str:
    return f"bench-{now:%Y%m%d-%H%M%S}.json"


def target(given: str, force: bool = False, now: datetime.datetime | None = None) -> Path:
    """The file that ``--json given`` writes: a new timestamped file inside a directory,
    else ``given`` itself, which must not exist unless ``force``."""
    path = Path(given)
    if path.is_dir():
        return path / timestamped_name(now or datetime.datetime.now())
    if given.endswith(("/", os.sep)):
        raise ResultsPathError(f"--json {given}: no such directory")
    if not path.parent.is_dir():
        raise ResultsPathError(f"--json {given}: the directory {str(path.parent)!r} does not exist")
    if path.exists() and not force:
        raise ResultsPathError(f"--json {given}: the file exists; add --force to overwrite it, or give a "
                               "directory to write a new timestamped file in")
    return path


def write(report: dict, path: Path, force: bool = False) -> Path:
    """Write ``report`` as JSON to ``path`` and return where it went. Without ``force`` an
    existing file is never replaced: one that appeared during the run (a second run in the
    same second, say) leaves this one at ``path`` with ``-1``, ``-2``, ... before its suffix."""
    candidate, number = path, 0
    while True:
        try:
            with open(candidate, "w" if force else "x") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
