"""What a checkpoint path names on disk, and the errors that refuse it.

``load`` reads a regular file only: it opens the path once (without blocking, so a FIFO
cannot hang it) and checks what it opened, so the file checked is the file read. ``save``
writes *through* symlinks: it replaces the file a link (or a chain of links, or a dangling
one) leads to, so the link stays.

Every refusal is a :class:`CheckpointFileError` (a ``ValueError``) naming the path and what is
there, except a missing file (or, for ``save``, a missing directory): that is the
``FileNotFoundError`` which ``open`` raises, so that "no checkpoint yet" (``except
FileNotFoundError: start afresh``) and "a bad checkpoint" are told apart by type, and an
``except ValueError`` clause does not take the one for the other.
"""

from __future__ import annotations

import errno
import os
import stat

KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


class CheckpointFileError(ValueError):
    """A path that cannot be read or written as a checkpoint file; ``.path`` is that path."""

    def __init__(self, message, path):
        super().__init__(message)
        self.path = path


def not_found(message):
    """The error for a missing file or directory: the ``FileNotFoundError`` (errno ``ENOENT``) that
    ``open`` raises, with ``message``."""
    return FileNotFoundError(errno.ENOENT, message)


def kind(mode: int) -> str:
    """What a ``st_mode`` says a path is, in words ("a directory", "a FIFO", ...)."""
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _symlink_note(path):
    if not os.path.islink(path):
        return ""
    return f" (a symlink to {os.readlink(path)!r})"


def _mode_or_none(path):
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return None


def open_checkpoint(path: str):
    """``path`` opened for reading as a binary file object, after checking it is a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise not_found(f"No checkpoint file at {path!r}{_symlink_note(path)}.") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        mode = _mode_or_none(path)
        if mode is not None and not stat.S_ISREG(mode):  # a socket cannot be opened at all
            raise CheckpointFileError(f"{path!r} is {kind(mode)}, not a checkpoint file.", path) from None
        raise CheckpointFileError(f"{path!r} cannot be opened as a checkpoint file: "
                                  f"{getattr(error, 'strerror', None) or error}.", path) from error
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointFileError(f"{path!r} is {kind(mode)}, not a checkpoint file.", path)
    except BaseException:
        os.close(fd)
        raise
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)  # O_NONBLOCK was for the open only (a FIFO's would wait for a writer)
    return os.fdopen(fd, "rb")


def writable_target(path: str) -> str:
    """The absolute path of the file that saving to ``path`` replaces: ``path``, or the file
    its symlinks lead to. Refuses a directory, a device, a FIFO, a symlink loop and a missing
    or non-directory parent, each naming ``path``."""
    target = os.path.realpath(path)
    through = "" if target == os.path.abspath(path) else f" (whose symlinks lead to {target!r})"
    directory = os.path.dirname(target)
    if os.path.islink(target) or os.path.islink(directory):  # realpath stops at a loop
        raise CheckpointFileError(f"Cannot save to path={path!r}: it is a symlink loop.", path)
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # the checks below say which
    except OSError as error:
        raise CheckpointFileError(f"Cannot save to path={path!r}{through}: {error.strerror}.", path) from error
    if mode is not None and not stat.S_ISREG(mode):
        raise CheckpointFileError(f"Cannot save to path={path!r}{through}: it is {kind(mode)}; a checkpoint is "
                                  "a regular file (saving would replace it).", path)
    if not os.path.exists(directory):
        raise not_found(f"Cannot save to path={path!r}{through}: the directory {directory!r} does not exist.")
    if not os.path.isdir(directory):
        raise CheckpointFileError(f"Cannot save to path={path!r}{through}: {directory!r} is not a directory.", path)
    return target
