"""Checkpoint paths: every refusal names the path, symlinks are written through, and an
interrupt at any point of a save leaves the old file (and raises) or the new one (and returns)."""

import builtins
import contextlib
import os
import socket
import stat
import threading

import numpy as np
import pytest
import safetensors.numpy

import interrupt_saves
import polyak
from polyak.saving import CheckpointFileError, files


def _saved(path, rate=0.5):
    polyak.save(path, polyak.SGD(rate, name="sgd"))
    return path.read_bytes()


def _content(path):
    """What a checkpoint holds (safetensors writes its metadata in no fixed order)."""
    tensors, metadata = files.read(str(path))
    return metadata, {key: (array.dtype, array.shape, array.tobytes()) for key, array in tensors.items()}


def _rate(path):
    return float(polyak.load(path).learning_rate)


# --- load: each refusal is a ValueError naming the path and what was found ---------------------------
def _checkpoint_bytes(tmp_path):
    w = polyak.Variable(np.arange(1000, dtype=np.float32), name="w")
    optimizer = polyak.SGD(momentum=0.9)
    optimizer.build([w])
    polyak.save(tmp_path / "good.ckpt", optimizer, [w])
    return (tmp_path / "good.ckpt").read_bytes()


def _with_metadata(tmp_path, data, **changes):
    path = tmp_path / "good.ckpt"
    path.write_bytes(data)
    tensors, metadata = files.read(str(path))
    metadata.update(changes)
    return safetensors.numpy.save(tensors, metadata=metadata)


def _make(tmp_path, what):
    """A path holding ``what``; returns (path, a word the refusal must say)."""
    path = tmp_path / "run.ckpt"
    data = _checkpoint_bytes(tmp_path)
    if what == "a directory":
        path.mkdir()
    elif what == "a FIFO":
        os.mkfifo(path)
    elif what == "a socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
    elif what == "a character device":
        return "/dev/null", "character device"
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "too short":
        path.write_bytes(b"abc")
    elif what == "text":
        path.write_bytes(b"step,loss\n1,0.5\n2,0.25\n" * 10)
    elif what == "a huge header length":
        path.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    elif what == "a header longer than the file":
        path.write_bytes((len(data)).to_bytes(8, "little") + data[8:])
    elif what == "a header that is not JSON":
        path.write_bytes((6).to_bytes(8, "little") + b"\xff\xfe{{{{" + data[14:])
    elif what == "a JSON header that is not an object":
        path.write_bytes((4).to_bytes(8, "little") + b"[1] ")
    elif what == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif what == "trailing bytes":
        path.write_bytes(data + b"\0" * 8)
    elif what == "a flipped array byte":
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:])
    elif what == "another safetensors file":
        safetensors.numpy.save_file({"w": np.zeros(2)}, str(path))
    elif what == "another format version":
        path.write_bytes(_with_metadata(tmp_path, data, format_version="2"))
    elif what == "a bad checksum":
        path.write_bytes(_with_metadata(tmp_path, data, checksum="sha256:" + "0" * 64))
    elif what == "a file below a file":
        path.write_bytes(data)
        path = path / "inner.ckpt"
    elif what == "a NUL byte":
        return str(tmp_path / "run\0.ckpt"), "null byte"
    return str(path), {"a directory": "is a directory", "a FIFO": "is a FIFO", "a socket": "is a socket",
                       "empty": "0 bytes long: empty", "too short": "3 bytes long: too short",
                       "text": "more than safetensors allows", "a huge header length": "more than safetensors",
                       "a header longer than the file": "bytes follow",
                       "a header that is not JSON": "not a JSON object",
                       "a JSON header that is not an object": "not a JSON object", "truncated": "is truncated",
                       "trailing bytes": "is damaged", "a flipped array byte": "checksum does not match",
                       "another safetensors file": "not a polyak checkpoint",
                       "another format version": "format version '2'", "a bad checksum": "checksum does not match",
                       "a file below a file": "Not a directory"}[what]


REFUSED = ["a directory", "a FIFO", "a socket", "a character device", "empty", "too short", "text",
           "a huge header length", "a header longer than the file", "a header that is not JSON",
           "a JSON header that is not an object", "truncated", "trailing bytes", "a flipped array byte",
           "another safetensors file", "another format version", "a bad checksum", "a file below a file",
           "a NUL byte"]


@pytest.mark.parametrize("what", REFUSED)
def test_load_refuses_what_is_not_a_checkpoint_naming_the_path(tmp_path, what):
    path, says = _make(tmp_path, what)
    optimizer = polyak.SGD(momentum=0.9)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_refusal(path, optimizer)), daemon=True)
    worker.start()
    worker.join(60)  # a FIFO opened for reading without a writer would block for ever
    assert outcome, f"polyak.load({path!r}) did not return"
    error = outcome[0]
    assert isinstance(error, CheckpointFileError) and isinstance(error, ValueError)
    assert repr(path) in str(error) and says in str(error), str(error)
    assert error.path == path and not optimizer.built


def _refusal(path, optimizer):
    try:
        polyak.load(path, optimizer)
    except Exception as error:  # noqa: BLE001 - the test looks at it
        return error
    return None


def test_a_missing_file_is_a_file_not_found_error_naming_the_path(tmp_path):
    path = str(tmp_path / "nothing.ckpt")
    with pytest.raises(FileNotFoundError) as info:
        polyak.load(path)
    assert info.value.errno == 2 and repr(path) in str(info.value) and not isinstance(info.value, ValueError)
    os.symlink("gone.ckpt", tmp_path / "link.ckpt")
    with pytest.raises(FileNotFoundError, match="a symlink to 'gone.ckpt'"):
        polyak.load(tmp_path / "link.ckpt")


def test_an_unreadable_file_is_refused_naming_the_path(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    _saved(path)
    real_open = os.open

    def denied(name, flags, *args, **kwargs):
        if os.fspath(name) == str(path):
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)  # as root, chmod 000 would not stop the read
    with pytest.raises(CheckpointFileError, match="cannot be opened as a checkpoint file: Permission denied") as info:
        polyak.load(path)
    assert repr(str(path)) in str(info.value) and isinstance(info.value.__cause__, PermissionError)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    _saved(path)
    os.chmod(path, 0)
    with pytest.raises(CheckpointFileError, match="Permission denied"):
        polyak.load(path)


# --- save: where it cannot write, it says so before writing anything ---------------------------
@pytest.mark.parametrize("what,says", [
    ("a directory", "it is a directory"),
    ("a FIFO", "it is a FIFO"),
    ("a missing directory", "does not exist"),
    ("a file as the directory", "is not a directory"),
    ("a symlink loop", "symlink loop"),
])
def test_save_refuses_a_path_it_cannot_write_a_file_at(tmp_path, what, says):
    path = tmp_path / "run.ckpt"
    if what == "a directory":
        path.mkdir()
    elif what == "a FIFO":
        os.mkfifo(path)
    elif what == "a missing directory":
        path = tmp_path / "missing" / "run.ckpt"
    elif what == "a file as the directory":
        (tmp_path / "file").write_bytes(b"old")
        path = tmp_path / "file" / "run.ckpt"
    elif what == "a symlink loop":
        os.symlink("other.ckpt", path)
        os.symlink("run.ckpt", tmp_path / "other.ckpt")
    before = {name: os.lstat(tmp_path / name) for name in os.listdir(tmp_path)}
    with pytest.raises(FileNotFoundError if what == "a missing directory" else CheckpointFileError) as info:
        polyak.save(path, polyak.SGD())
    assert repr(str(path)) in str(info.value) and says in str(info.value), str(info.value)
    assert {name: os.lstat(tmp_path / name) for name in os.listdir(tmp_path)} == before


# --- save writes through symlinks ----------------------------------------------------------------
def test_a_symlink_is_written_through_and_kept(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "run-7.ckpt"
    _saved(target, 0.5)
    os.chmod(target, 0o640)
    old_inode = os.stat(target).st_ino
    link = tmp_path / "latest.ckpt"
    os.symlink(os.path.join("runs", "run-7.ckpt"), link)
    polyak.save(link, polyak.SGD(0.25))
    assert os.readlink(link) == os.path.join("runs", "run-7.ckpt")
    assert _rate(target) == 0.25 and _rate(link) == 0.25
    assert os.stat(target).st_ino != old_inode  # replaced by a rename, not rewritten in place
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["latest.ckpt", "runs"] and os.listdir(tmp_path / "runs") == ["run-7.ckpt"]


def test_a_dangling_symlink_and_a_chain_of_them_are_written_through(tmp_path):
    (tmp_path / "store").mkdir()
    os.symlink(tmp_path / "store" / "run.ckpt", tmp_path / "dangling.ckpt")
    polyak.save(tmp_path / "dangling.ckpt", polyak.SGD(0.5))
    assert os.path.islink(tmp_path / "dangling.ckpt") and _rate(tmp_path / "store" / "run.ckpt") == 0.5

    os.symlink("dangling.ckpt", tmp_path / "middle.ckpt")
    os.symlink("middle.ckpt", tmp_path / "first.ckpt")
    polyak.save(tmp_path / "first.ckpt", polyak.SGD(0.125))
    assert all(os.path.islink(tmp_path / name) for name in ("first.ckpt", "middle.ckpt", "dangling.ckpt"))
    assert _rate(tmp_path / "store" / "run.ckpt") == 0.125
    assert os.listdir(tmp_path / "store") == ["run.ckpt"]


def test_a_symlinked_directory_is_written_through(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "alias")
    polyak.save(tmp_path / "alias" / "run.ckpt", polyak.SGD(0.5))
    assert os.path.islink(tmp_path / "alias") and _rate(tmp_path / "real" / "run.ckpt") == 0.5


# --- an interrupt at each step of a save ------------------------------------------------------------
STEPS = [(os, "stat"), (os, "lstat"), (os, "open"), (os, "close"), (os, "fsync"), (os, "chmod"),
         (os, "replace"), (os, "unlink"), (builtins, "open")]


@contextlib.contextmanager
def _interrupts(at=(), when="after", error=KeyboardInterrupt):
    """Record the OS calls made inside the block (``calls``); the calls numbered ``at`` raise
    ``error`` right ``before`` the real call or right ``after`` it returned."""
    calls, real = [], {(module, name): getattr(module, name) for module, name in STEPS}

    def step(module, name):
        def call(*args, **kwargs):
            calls.append(name)
            hit = len(calls) - 1 in at
            if hit and when == "before":
                raise error(f"before {name}")
            result = real[module, name](*args, **kwargs)
            if hit:
                raise error(f"after {name}")
            return result
        return call

    for module, name in STEPS:
        setattr(module, name, step(module, name))
    try:
        yield calls
    finally:
        for (module, name), function in real.items():
            setattr(module, name, function)


# Where an interrupt costs the directory's descriptor (the file's is a file object, closed when
# dropped): the int os.open returned is lost if an interrupt lands before it is bound, and
# os.close cannot be retried (the number may be another thread's by then). A real signal
# lands after a call returns, so "before close" is an os.close failing, never an interrupt.
UNBOUND = {("after", "open"), ("before", "close")}


def _open_descriptors():
    return sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else []


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, lambda text: OSError(5, text)],
                         ids=["KeyboardInterrupt", "SystemExit", "OSError"])
@pytest.mark.parametrize("when", ["before", "after", "after, then again"])
def test_an_interrupt_at_any_step_leaves_the_old_file_and_raises_or_the_new_one_and_returns(tmp_path, error, when):
    path = tmp_path / "run.ckpt"
    old = _saved(path, 0.5)
    with _interrupts() as calls:
        polyak.save(path, polyak.SGD(0.25, name="sgd"))
    new = _content(path)
    assert "replace" in calls and len(calls) > 5
    outcomes, failures = set(), []
    for i in range(len(calls)):
        path.write_bytes(old)
        descriptors = _open_descriptors()
        at = (i, i + 1) if when == "after, then again" else (i,)
        try:
            with _interrupts(at, when.split(",")[0], error) as run:
                polyak.save(path, polyak.SGD(0.25, name="sgd"))
        except BaseException as caught:  # noqa: BLE001 - the outcome under test
            if error in (KeyboardInterrupt, SystemExit):  # os.path's helpers take an OSError for "no such file"
                assert f"{when.split(',')[0]} {calls[i]}" in str(caught)
            assert path.read_bytes() == old, f"raised at {when} {calls[i]} (call {i}) with the new file in place"
            outcomes.add("raised")
        else:
            assert _content(path) == new, f"returned at {when} {calls[i]} (call {i}) with the old file"
            outcomes.add("returned")
        assert os.listdir(tmp_path) == ["run.ckpt"], f"a temporary file was left at {when} {calls[i]}"
        leaked = sorted(set(_open_descriptors()) - set(descriptors))
        if any((when.split(",")[0], name) in UNBOUND for name in (run[j] for j in at if j < len(run))):
            leaked = []
        failures.extend([f"{when} {calls[i]} (call {i}) leaked {leaked}"] if leaked else [])
    assert not failures
    assert outcomes == {"raised", "returned"}


def test_an_interrupt_right_after_the_rename_returns_with_the_new_file(tmp_path):
    path = tmp_path / "run.ckpt"
    _saved(path, 0.5)
    with _interrupts() as calls:
        polyak.save(path, polyak.SGD(0.25, name="sgd"))
    rename = calls.index("replace")
    for at in [(rename,), (rename, rename + 1), tuple(range(rename, len(calls) + 3))]:
        _saved(path, 0.5)
        with _interrupts(at):
            polyak.save(path, polyak.SGD(0.25, name="sgd"))
        assert _rate(path) == 0.25 and os.listdir(tmp_path) == ["run.ckpt"]


def test_a_failed_directory_sync_does_not_fail_a_save_that_is_in_place(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    _saved(path, 0.5)
    real_fsync, synced = os.fsync, []

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        if synced[-1]:
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    polyak.save(path, polyak.SGD(0.25, name="sgd"))
    assert synced == [False, True] and _rate(path) == 0.25


def test_a_failed_write_says_which_checkpoint_is_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    old = _saved(path, 0.5)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left") as info:
        polyak.save(path, polyak.SGD(0.25, name="sgd"))
    assert any(repr(str(path)) in note and "unchanged" in note for note in info.value.__notes__)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["run.ckpt"]


def test_sigint_at_random_moments_never_breaks_the_promise(tmp_path):
    counts = interrupt_saves.run(30, seed=3, directory=str(tmp_path))
    broken = {outcome: n for outcome, n in counts.items() if not outcome.startswith("landed")}
    assert not broken, counts
    assert sum(counts.values()) == 30
