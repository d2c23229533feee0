"""Replace a file all or nothing, even when an interrupt arrives part-way.

The bytes go to a temporary file in the target's directory, which is flushed, fsynced and
renamed over the target with ``os.replace`` (atomic on POSIX and Windows); the directory is
then fsynced so that the rename survives a power loss. A process killed at any instant leaves
the complete old file or the complete new one (and at worst a stray ``.{name}.*.tmp`` file).

The rename is the commit point, and the call's outcome follows it, whatever exception (a
``KeyboardInterrupt`` from SIGINT, a signal handler's ``SystemExit``, an ``OSError``) arrives
at whatever moment:

* before the rename: the temporary file is removed, the target is untouched, and the
  exception propagates;
* after it: the call returns. The directory's fsync is best-effort (its failure is not
  reported), and an interrupt that lands there is absorbed: the save it interrupted is done.

Whether the rename happened is read from the disk, not from a flag that an interrupt could
land before: the temporary file's name is gone exactly when ``os.replace`` has run. What no
Python function can close: an interrupt that lands as the call hands back to its caller is
raised there, as one landing just after the call would be.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

from polyak.saving import paths


def atomic_write(path: str, data: bytes) -> None:
    """Replace the file at ``path`` (or, for a symlink, the file it leads to) by ``data``."""
    target = paths.writable_target(path)
    directory, name = os.path.split(target)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    renaming = False
    try:
        _write_temporary(temporary, data, target)
        renaming = True
        os.replace(temporary, target)
    except BaseException as error:
        renamed = renaming and _despite_interrupts(_gone, temporary) is True
        if not renamed:
            _despite_interrupts(_remove, temporary)
            if isinstance(error, OSError):
                error.add_note(f"Writing {path!r} failed: it is unchanged, and no temporary file was left.")
            raise
    _despite_interrupts(_sync_directory, directory)


def _write_temporary(temporary, data, target):
    with open(temporary, "xb") as file:  # a file object: an interrupt cannot leak its descriptor
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    with contextlib.suppress(FileNotFoundError):
        os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))  # keep the old file's permissions


def _gone(path):
    """Whether ``path`` surely does not exist (False if that cannot be told)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sync_directory(directory):
    """Make a rename in ``directory`` durable (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _despite_interrupts(action, *args):
    """``action(*args)`` run to its end: an interrupt (an exception that is not an ``Exception``)
    arriving meanwhile runs it again, so ``action`` must be idempotent; a failure gives None."""
    while True:
        try:
            return action(*args)
        except Exception:  # noqa: BLE001 - best effort: the caller's outcome is already decided
            return None
        except BaseException:  # noqa: BLE001 - an interrupt: the outcome is decided, finish the action
            continue
