"""The checkpoint file: a safetensors file, a checksum, and an atomic write.

safetensors stores named arrays after a JSON header and nothing executable (no
pickle); NumPy, PyTorch and JAX all read it. The header's ``__metadata__`` (a
string-to-string map) carries ``format``, ``format_version`` and ``checksum``
plus what the caller adds. The checksum is ``sha256`` over that metadata and
every array (name, dtype, shape, bytes): it detects a damaged file, it does not
authenticate one (anybody can write a valid checksum).

A write replaces the file atomically (:mod:`polyak.saving.atomic`); a read opens
a regular file only (:mod:`polyak.saving.paths`) and checks the safetensors
header's frame before parsing, so a file that is not a checkpoint is refused
with what was found, naming the path.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import safetensors
import safetensors.numpy

from polyak.saving import paths
from polyak.saving.atomic import atomic_write

FORMAT = "polyak.checkpoint"
VERSION = 1
MAX_HEADER = 100_000_000  # bytes: safetensors refuses a longer header


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
    """Write a checkpoint atomically; a path that cannot be written is refused before encoding."""
    paths.writable_target(path)
    atomic_write(path, encode(tensors, metadata))


def read(path: str) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a checkpoint after checking its format, version and checksum.

    The file is opened once, so a concurrent ``write`` (which replaces it) is
    seen entirely or not at all. Whatever is not a polyak checkpoint, or is
    damaged, raises a :class:`~polyak.saving.paths.CheckpointFileError` (a
    ``ValueError``) naming the path; a missing file raises ``FileNotFoundError``.
    """
    with paths.open_checkpoint(path) as file:
        metadata = _header_metadata(file, path)
        file.seek(0)
        data = file.read()
    try:
        tensors = safetensors.numpy.load(data)
    except (safetensors.SafetensorError, ValueError, OverflowError) as error:
        raise _refused(path, f"is damaged: {error}") from None
    if metadata.get("format") != FORMAT:
        raise _refused(path, "is a safetensors file but not a polyak checkpoint. "
                             f"Received: format={metadata.get('format')!r}")
    version = metadata.get("format_version")
    if version != str(VERSION):
        raise _refused(path, f"has checkpoint format version {version!r}; this polyak reads version {VERSION}. "
                             "A newer polyak wrote it, or it is damaged.")
    if metadata.get("checksum") != checksum(tensors, metadata):
        raise _refused(path, "is damaged: its checksum does not match its contents.")
    return tensors, metadata


def _refused(path, what):
    return paths.CheckpointFileError(f"{path!r} {what}", path)


def _header_metadata(file, path):
    """The ``__metadata__`` of the safetensors header at the start of ``file``, after checking
    the header's frame: an 8-byte little-endian length, that many bytes of a JSON object, then
    the arrays' bytes (as many as the header's offsets say). The arrays are not read yet."""
    size = os.fstat(file.fileno()).st_size
    if size < 8:
        raise _refused(path, f"is {size} bytes long: {'empty' if size == 0 else 'too short'}, not a checkpoint "
                             "(a safetensors file starts with its header's 8-byte length).")
    length = int.from_bytes(file.read(8), "little")
    if length > min(size - 8, MAX_HEADER):
        limit = "more than safetensors allows" if length > MAX_HEADER else f"but only {size - 8} bytes follow"
        raise _refused(path, f"is not a checkpoint: its first 8 bytes give a header of {length} bytes, {limit} "
                             "(it is truncated, or not a safetensors file).")
    raw = file.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise _refused(path, f"is not a safetensors file: its {length}-byte header is not a JSON object "
                             f"(it starts {raw[:16]!r}).")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise _refused(path, "is damaged: its header's __metadata__ is not a map of strings.")
    offsets = [entry.get("data_offsets") for entry in header.values() if isinstance(entry, dict)]
    ends = [o[-1] for o in offsets if isinstance(o, list) and o and isinstance(o[-1], int)]
    stored = size - 8 - length
    if ends and max(ends) > stored:
        raise _refused(path, f"is truncated: its header lists {max(ends)} bytes of arrays, and {stored} follow it.")
    return metadata
