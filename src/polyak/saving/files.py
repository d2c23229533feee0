"""The checkpoint file: a safetensors file, a checksum, and an atomic write.

safetensors stores named arrays after a JSON header and nothing executable (no
pickle); NumPy, PyTorch and JAX all read it. The header's ``__metadata__`` (a
string-to-string map) carries ``format``, ``format_version`` and ``checksum``
plus what the caller adds. The checksum is ``sha256`` over that metadata and
every array (name, dtype, shape, bytes): it detects a damaged file, it does not
authenticate one (anybody can write a valid checksum).

A write goes to a temporary file in the target's directory, is flushed and
fsynced, renamed over the target with ``os.replace`` (atomic on POSIX and
Windows), and the directory is fsynced: a process killed at any instant leaves
the complete old file or the complete new one (and at worst a stray
``.{name}.*.tmp`` file next to it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat

import numpy as np
import safetensors
import safetensors.numpy

FORMAT = "polyak.checkpoint"
VERSION = 1


def _little_endian(array):
    """``array`` C-contiguous and little-endian, as safetensors stores it (0-d stays 0-d)."""
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def checksum(tensors: dict, metadata: dict) -> str:
    """``sha256:<hex>`` of ``metadata`` (without its checksum) and every array."""
    digest = hashlib.sha256()
    fields = {k: v for k, v in metadata.items() if k != "checksum"}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    for key in sorted(tensors):
        array = tensors[key]
        digest.update(json.dumps([key, array.dtype.name, list(array.shape)]).encode())
        digest.update(_little_endian(array).tobytes())
    return "sha256:" + digest.hexdigest()


def encode(tensors: dict, metadata: dict) -> bytes:
    """The file's bytes: ``tensors`` (name -> NumPy array) and ``metadata`` (str -> str)."""
    metadata = {**metadata, "format": FORMAT, "format_version": str(VERSION)}
    metadata["checksum"] = checksum(tensors, metadata)
    tensors = {k: _little_endian(v) for k, v in tensors.items()}
    return safetensors.numpy.save(tensors, metadata=metadata)


def write(path: str, tensors: dict, metadata: dict) -> None:
    """Write a checkpoint atomically (see the module docstring)."""
    atomic_write(path, encode(tensors, metadata))


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, all or nothing."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))  # keep the old file's permissions
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a checkpoint after checking its format, version and checksum.

    The file is opened once, so a concurrent ``write`` (which replaces it) is
    seen entirely or not at all. A file that is not a polyak checkpoint, or is
    damaged, raises ``ValueError``; a missing file raises ``FileNotFoundError``.
    """
    try:
        with safetensors.safe_open(path, framework="numpy") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (safetensors.SafetensorError, UnicodeDecodeError, ValueError, OverflowError) as error:
        raise ValueError(f"{path!r} is not a readable checkpoint file: {error}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is a safetensors file but not a polyak checkpoint. "
            f"Received: format={metadata.get('format')!r}"
        )
    version = metadata.get("format_version")
    if version != str(VERSION):
        raise ValueError(
            f"{path!r} has checkpoint format version {version!r}; this polyak reads version {VERSION}. "
            "A newer polyak wrote it, or it is damaged."
        )
    if metadata.get("checksum") != checksum(tensors, metadata):
        raise ValueError(f"{path!r} is damaged: its checksum does not match its contents.")
    return tensors, metadata
