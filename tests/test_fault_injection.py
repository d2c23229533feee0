"""A process saving in a loop is SIGKILLed at random moments: the file is always old or new, never torn."""

import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import polyak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS, TIME_LIMIT = 8, 30.0

# Resumes from the file if there is one, then saves states k = k0 + 1, k0 + 2, ... for ever,
# printing k after each save returns. State k: iteration k, weights all k, momentums all -k.
SAVING_LOOP = """
import sys
import numpy as np
import polyak

path = sys.argv[1]
w = polyak.Variable(np.zeros(500_000, np.float32), name="w")
optimizer = polyak.SGD(momentum=0.9)
optimizer.build([w])
try:
    polyak.load(path, optimizer, [w])
except FileNotFoundError:
    pass
k = int(optimizer.iterations.numpy())
while True:
    k += 1
    optimizer.iterations.assign(k)
    w.assign(np.full(w.shape, k, np.float32))
    optimizer.momentums[0].assign(np.full(w.shape, -k, np.float32))
    polyak.save(path, optimizer, [w])
    print(k, flush=True)
"""


def _kill_moment(rng, rounds, directory):
    """Even rounds: a random delay. Odd rounds: as soon as a temporary file shows up, i.e. in
    the middle of a write, between its first byte and the rename (bounded by 1 s)."""
    if rounds % 2 == 0:
        time.sleep(rng.uniform(0, 0.05))
        return
    def temporaries():
        return {name for name in os.listdir(directory) if name.endswith(".tmp")}

    stale, deadline = temporaries(), time.monotonic() + 1.0  # stale: left by earlier kills
    while time.monotonic() < deadline and not temporaries() - stale:
        time.sleep(0.0005)


def _state_in(path):
    w = polyak.Variable(np.zeros(500_000, np.float32), name="w")
    optimizer = polyak.load(path, polyak.SGD(momentum=0.9), [w])
    k = int(optimizer.iterations.numpy())
    assert (w.numpy() == k).all() and (optimizer.momentums[0].numpy() == -k).all(), "a torn state"
    return k


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_saves_leaves_the_old_or_the_new_file(tmp_path):
    path = str(tmp_path / "run.ckpt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")])}
    rng = np.random.default_rng(0)
    started, rounds = time.monotonic(), 0
    while rounds < ROUNDS and time.monotonic() - started < TIME_LIMIT:
        child = subprocess.Popen([sys.executable, "-c", SAVING_LOOP, path], stdout=subprocess.PIPE, env=env,
                                 text=True)
        try:
            ready, _, _ = select.select([child.stdout], [], [], 30)
            assert ready, "the saving loop never completed a save"
            first = child.stdout.readline()
            _kill_moment(rng, rounds, tmp_path)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        completed = [int(k) for k in (first + child.stdout.read()).split()]
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        last = completed[-1]
        # the last save that returned, or the one in flight if its rename had happened
        assert _state_in(path) in (last, last + 1)
        rounds += 1
    assert rounds >= 3
    leftovers = [name for name in os.listdir(tmp_path) if name != "run.ckpt"]
    assert all(name.startswith(".run.ckpt.") and name.endswith(".tmp") for name in leftovers)
