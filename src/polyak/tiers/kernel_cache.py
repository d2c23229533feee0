"""The private folder that keeps the fused CPU kernels across processes.

It holds each kernel's generated source and, next to it, numba's cache of the compiled code.
numba's cache files are pickles, loaded as code: whoever can write the folder decides what
polyak runs. So the folder is the user's own: ``$POLYAK_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/polyak/kernels``, else ``~/.cache/polyak/kernels``; it is created with mode
0700, and before anything is written to or loaded from it, it must be a directory owned by
this user and writable by no one else (group and others). Where it is not, or cannot be made,
kernels compile without a disk cache (every process anew, their sources in a scratch folder
of its own, removed at exit) and a warning says so, once per folder: there is no shared
fallback such as ``/tmp/polyak-kernels``.

A marker file per (kernel source, dtype) records that numba has compiled and cached that
kernel here, so a new process knows, before it imports numba, that loading the kernel costs
milliseconds rather than seconds (``cpu_fused`` then loads it in the foreground).
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

_warned = set()
_scratch = {}  #: process id -> this process's scratch folder


def _configured() -> Path:
    root = os.environ.get("POLYAK_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "polyak", "kernels"
    )
    return Path(root)


def refusal(path) -> str | None:
    """Why ``path`` may not hold kernels (not a directory, another owner, writable by others),
    or None if it may."""
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    user = os.geteuid() if hasattr(os, "geteuid") else None
    if user is not None and info.st_uid != user:
        return f"is owned by uid {info.st_uid}, not by this user (uid {user})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"has mode {mode:04o}: others can write it"
    return None


def folder() -> Path | None:
    """The private cache folder (made now if missing), or None (with a warning, once per
    folder) where there is none to be had: kernels then compile in memory only."""
    path = _configured()
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        reason = refusal(path)
    except OSError as error:
        reason = f"cannot be made or read ({error.strerror or error})"
    if reason is None:
        return path
    if (path, reason) not in _warned:
        _warned.add((path, reason))
        warnings.warn(f"polyak: the kernel cache folder {path} {reason}; fused kernels compile without a disk "
                      "cache (set POLYAK_KERNEL_CACHE to a folder of your own, mode 0700)", RuntimeWarning,
                      stacklevel=2)
    return None


def scratch() -> Path:
    """A folder of this process's own (mode 0700, a fresh name) for sources that are not to be
    kept; removed at exit."""
    pid = os.getpid()
    if pid not in _scratch:
        _scratch[pid] = Path(tempfile.mkdtemp(prefix="polyak-kernels-"))
        atexit.register(shutil.rmtree, _scratch[pid], ignore_errors=True)
    return _scratch[pid]


def _marker(root, digest, dtype) -> Path:
    return root / f"polyak_kernel_{digest}.{dtype.str.lstrip('<>=|')}.compiled"


def on_disk(digest, dtype) -> bool:
    """Whether the kernel of source ``digest`` was compiled and cached for ``dtype`` weights."""
    root = folder()
    return root is not None and _marker(root, digest, dtype).exists()


def mark(digest, dtype):
    """Record that numba compiled (and cached) the kernel of source ``digest`` for ``dtype``."""
    root = folder()
    if root is not None:
        _marker(root, digest, dtype).touch()
