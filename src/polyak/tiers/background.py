"""Compiling the fused CPU kernels in a background thread while the reference tier steps.

Loading numba and compiling a kernel costs about a second, and a new configuration two or
three; a step takes milliseconds. So the fused tier asks :data:`COMPILER` whether what a step
needs is ready: if not, the work is queued for one daemon thread and that step runs the
reference tier, which gives the same numbers bit for bit (the fused tier only promises that
for configurations without norm clipping: those compile in the foreground, so that a run's
numbers never depend on timing). A kernel already in the disk cache is loaded in the
foreground instead (``cpu_fused``): milliseconds for the kernel, and for numba's import, when it
is the process's first, about half a second.

Set ``POLYAK_BACKGROUND_COMPILE=0`` to compile in the foreground instead: every step the
fused tier can take then takes it, the first one waiting for its kernel. :func:`wait` blocks
until the queued work is done (benchmarks call it after their warm-up).

A job holds no user data: only what it compiles for (types, shapes, source text), so the
worker never frees a user's tensor. At the interpreter's exit (before ``atexit`` handlers,
among ``threading``'s own exit hooks), queued work is dropped and the job under way is let
finish, so numba is never torn down under a compile. ``os.fork`` waits for the job under way
too (a second or two at most): a child then never inherits a half-done import or a lock held
by the worker; it gets a compiler of its own, which knows what the parent finished.
"""

from __future__ import annotations

import atexit
import collections
import os
import sys
import threading


def enabled() -> bool:
    """Whether kernels compile in the background (``POLYAK_BACKGROUND_COMPILE``, on unless "0")."""
    return os.environ.get("POLYAK_BACKGROUND_COMPILE", "1") != "0"


class Compiler:
    """Runs jobs, once per key and in the order asked, on one daemon thread."""

    def __init__(self, done=()):
        self._lock = threading.Condition()
        self._done = set(done)
        self._pending = set()
        self._queue = collections.deque()
        self._thread = None
        self._closed = False
        #: held by the worker while a job runs, and by ``os.fork`` (see ``_before_fork``)
        self._running = threading.Lock()

    def done(self, key) -> bool:
        """Whether ``key``'s job has run (or failed); queues nothing."""
        return key in self._done

    def ready(self, key, job) -> bool:
        """Whether ``key``'s job has run (or failed: its caller then compiles in the foreground
        and sees the error); if not, it is queued, once. ``job`` must not hold user data."""
        if key in self._done:
            return True
        with self._lock:
            if key in self._done or self._closed:
                return True
            if key not in self._pending:
                self._pending.add(key)
                self._queue.append((key, job))
                if self._thread is None:
                    _hook_forks()
                    self._thread = threading.Thread(target=self._work, name="polyak-kernel-compiler", daemon=True)
                    self._thread.start()
        return False

    def _work(self):
        while True:
            with self._lock:
                if self._closed or not self._queue:
                    self._thread = None
                    self._lock.notify_all()
                    return
                key, job = self._queue.popleft()
            with self._running:
                try:
                    job()
                except Exception:  # noqa: BLE001 - the step that needs it compiles in the foreground and raises
                    pass
                del job  # before the job counts as done: nothing of it outlives its run here
            with self._lock:
                self._done.add(key)
                self._pending.discard(key)

    def wait(self) -> bool:
        """Block until every queued job has run; whether there was any."""
        with self._lock:
            waited = self._thread is not None
            while self._thread is not None:
                self._lock.wait()
        return waited

    def close(self):
        """Drop the queued jobs and wait for the one under way (at the interpreter's exit)."""
        with self._lock:
            self._closed = True
            self._queue.clear()
        self.wait()


COMPILER = Compiler()


def wait() -> bool:
    """Block until the kernels queued for compiling are ready; whether any were."""
    return COMPILER.wait()


def _hook_forks():
    # ``os.fork`` runs the ``before`` hooks last registered first: registered again when a worker
    # starts, ours run before those of the modules imported since, which may take a lock that
    # the job under way needs (``logging``'s, say); once per import wave, they act once per fork
    global _hooked_at
    if _hooked_at != len(sys.modules):
        _hooked_at = len(sys.modules)
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)


def _before_fork():
    if not _forking:
        compiler = COMPILER
        compiler._running.acquire()
        _forking.append(compiler)


def _after_fork_in_parent():
    if _forking:
        _forking.pop()._running.release()


def _after_fork_in_child():
    # the child has no worker thread, and the parent's locks are not its to release
    global COMPILER
    if _forking:
        COMPILER = Compiler(done=_forking.pop()._done)


_hooked_at = None  #: how many modules were loaded when the fork hooks were last registered
_forking = []  #: the compiler whose job ``os.fork`` waited for (a test may swap ``COMPILER``)


def _close():
    COMPILER.close()


# threading's exit hooks run before atexit's, while numba and torch are still whole
getattr(threading, "_register_atexit", atexit.register)(_close)
