"""A process that used polyak exits with code 0, whatever its kernel compile was doing (issue 24).

Each run is ``tests/exit_child.py`` in a fresh process with a cold kernel cache: it leaves a
kernel compiling in the background and ends, its weights dropped or held, collected or not.
Before the fix such a process freed its last torch tensors from the compiler's thread while
the interpreter was finalizing, and aborted (``terminate called without an active
exception``, exit code 134) in 5 to 8 runs of 10 of each torch variant here, so twelve runs
catch it; every run must now exit cleanly. The children run two at a time.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from polyak.tiers import cpu_fused

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="numba is not installed")

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("exit_child.py")
#: (weights, sizes, flags): polyak.SGD on NumPy arrays or tensors, polyak.torch.SGD ("face");
#: 4 x 16 MB or 64 small; collected before exit (gc), the optimizer inside a function (main)
RUNS = [("face", "big", ()), ("face", "small", ()), ("face", "big", ("gc",)), ("face", "small", ("main",)),
        ("torch", "big", ()), ("torch", "small", ("gc",)), ("face", "big", ("main",)), ("numpy", "big", ()),
        ("face", "small", ("gc",)), ("torch", "big", ("main",)), ("numpy", "small", ("main", "gc")),
        ("face", "big", ("main", "gc"))]


def _start(run, cache):
    kind, sizes, flags = run
    env = dict(os.environ, POLYAK_BACKGROUND_COMPILE="1", POLYAK_KERNEL_CACHE=cache, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, str(CHILD), kind, sizes, *flags], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_process_exits_cleanly_while_a_kernel_compiles(tmp_path):
    failures = []
    for first in range(0, len(RUNS), 2):
        pair = RUNS[first:first + 2]
        children = [(run, _start(run, tempfile.mkdtemp(dir=tmp_path))) for run in pair]
        for run, child in children:
            out, err = child.communicate(timeout=300)
            if child.returncode != 0 or out != "done\n" or err:
                failures.append(f"{run}: exit code {child.returncode}, stdout {out!r}, stderr {err[-500:]!r}")
    assert not failures, "\n".join(failures)
