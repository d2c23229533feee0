"""Interrupt ``polyak.save`` with SIGINT at random moments and count what each interrupt left.

    PYTHONPATH=src python tests/interrupt_saves.py [N] [--seed S] [--dir DIR]

A child process saves states k = 1, 2, ... (state k: iteration k, weights k, momentums -k); before
each save it tells the parent, which waits a random time within one save's duration (measured by
the child on its first saves), sends one SIGINT, then tells the child it has. The child says
where the interrupt landed ("raised" from inside ``save``; "absorbed" by a ``save`` that
returned; "returned": after ``save`` returned; "outside": in the child's own code just before
or after the call), what the file holds, and how many temporary files are left. The contract:
raised inside ``save`` => the file holds what it held before and no temporary is left;
returned => it holds k.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import itertools, os, select, sys, time
import numpy as np
import polyak

directory = sys.argv[1]
path = os.path.join(directory, "run.ckpt")
package = os.path.dirname(polyak.__file__)
w = polyak.Variable(np.zeros(500_000, np.float32), name="w")
optimizer = polyak.SGD(momentum=0.9)
optimizer.build([w])

def set_state(k):
    optimizer.iterations.assign(k)
    w.assign(np.full(w.shape, k, np.float32))
    optimizer.momentums[0].assign(np.full(w.shape, -k, np.float32))

def held():
    fresh = polyak.Variable(np.zeros(500_000, np.float32), name="w")
    try:
        loaded = polyak.load(path, polyak.SGD(momentum=0.9), [fresh])
    except Exception as error:
        return f"unreadable:{type(error).__name__}"
    k = int(loaded.iterations.numpy())
    whole = (fresh.numpy() == k).all() and (loaded.momentums[0].numpy() == -k).all()
    return str(k) if whole else "torn"

def inside_polyak(traceback):
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename.startswith(package):
            return True
        traceback = traceback.tb_next
    return False

durations = []
for k in range(1, 6):
    set_state(k)
    started = time.perf_counter()
    polyak.save(path, optimizer, [w])
    durations.append(time.perf_counter() - started)
print("duration", sorted(durations)[2], flush=True)
for k in itertools.count(6):
    set_state(k)
    landed = "absorbed"
    try:
        try:
            print("saving", k, flush=True)
            polyak.save(path, optimizer, [w])
        except KeyboardInterrupt as error:
            landed = "raised" if inside_polyak(error.__traceback__.tb_next) else "outside"
        else:
            select.select([sys.stdin], [], [], 60)  # the SIGINT was sent before this line: it lands now
            time.sleep(0.01)                          # unless save took it
    except KeyboardInterrupt:
        landed = "returned"
    sys.stdin.readline()
    temporaries = [name for name in os.listdir(directory) if name.endswith(".tmp")]
    for name in temporaries:
        os.unlink(os.path.join(directory, name))
    print("report", k, landed, held(), len(temporaries), flush=True)
"""


def _line(child, word):
    line = child.stdout.readline().split()
    assert line and line[0] == word, f"the child said {line!r}, expected {word!r}"
    return line[1:]


def run(n, seed=0, directory=None):
    """Interrupt ``n`` saves; returns a Counter of outcomes (see :func:`classify`)."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(dir=directory) as where:
        child = subprocess.Popen([sys.executable, "-c", CHILD, where], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        try:
            duration = float(_line(child, "duration")[0])
            counts, before = collections.Counter(), "5"
            for _ in range(n):
                k = int(_line(child, "saving")[0])
                time.sleep(rng.uniform(0, 1.2 * duration))
                child.send_signal(signal.SIGINT)
                child.stdin.write("sent\n")
                child.stdin.flush()
                _, landed, held, temporaries = _line(child, "report")
                counts.update(classify(k, before, landed, held, int(temporaries)))
                before = held
        finally:
            child.kill()
            child.wait()
    return counts


def classify(k, before, landed, held, temporaries):
    """The outcomes of one interrupt of the save of state ``k`` over a file holding ``before``:
    where it landed, and each broken promise."""
    outcomes = [f"landed {landed}"]
    if held not in (str(k), before):
        outcomes.append(f"file holds {held}: neither the old state nor the new")
    elif landed == "raised" and held == str(k):
        outcomes.append("raised but new file in place")
    elif landed in ("returned", "absorbed") and held != str(k):
        outcomes.append("returned but old file in place")
    if temporaries:
        outcomes.append("temporary left")
    return outcomes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where to make the temporary directory")
    args = parser.parse_args()
    counts = run(args.n, args.seed, args.dir)
    print(f"{args.n} interrupts of polyak.save ({os.path.dirname(__import__('polyak').__file__)}):")
    for outcome, count in sorted(counts.items()):
        print(f"  {count:4d}  {outcome}")


if __name__ == "__main__":
    main()
