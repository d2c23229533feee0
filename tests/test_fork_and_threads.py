"""One optimizer stepped from two threads, and processes forked while kernels load (issue 24).

``apply`` (and the torch face's ``step``) take a lock per optimizer: steps from two threads
run whole, one after the other, so none is lost. With a constant gradient every order of
the steps gives the same numbers, those of one thread taking them all.

A forked child must train whatever the parent was doing: ``os.fork`` waits for the job the
background compiler is running (numba's import, a kernel's compile), and a child forked
after numba's OpenMP threads started takes the serial kernels. The forks run in a fresh
process with background compiles on and a cold kernel cache, so that numba is not loaded
when the first fork comes.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import polyak
from polyak.tiers import cpu_fused

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="numba is not installed")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 150


@pytest.fixture
def fast_switching():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave within every step
    yield
    sys.setswitchinterval(interval)


def _in_two_threads(step):
    threads = [threading.Thread(target=lambda: [step() for _ in range(STEPS)]) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _weights():
    rng = np.random.default_rng(0)
    return [rng.normal(size=s).astype(np.float32) for s in [(64, 32), (32,), (32, 8)]]


def test_one_optimizer_stepped_from_two_threads_takes_every_step(fast_switching):
    shared, alone = _weights(), _weights()
    grads = [np.full_like(w, 0.01) for w in shared]
    opt = polyak.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    _in_two_threads(lambda: opt.apply(grads, shared))
    one = polyak.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    for _ in range(2 * STEPS):
        one.apply(grads, alone)
    assert int(opt.iterations) == 2 * STEPS and opt._last_tier == "cpu_fused"
    for a, b in zip(shared + opt.variables, alone + one.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_torch_face_stepped_from_two_threads_takes_every_step(fast_switching):
    torch = pytest.importorskip("torch")
    import polyak.torch

    def model():
        params = [torch.nn.Parameter(torch.from_numpy(w)) for w in _weights()]
        for p in params:
            p.grad = torch.full_like(p, 0.01)
        return params

    shared, alone = model(), model()
    opt = polyak.torch.SGD(shared, lr=0.1, momentum=0.9)
    _in_two_threads(opt.step)
    one = polyak.torch.SGD(alone, lr=0.1, momentum=0.9)
    for _ in range(2 * STEPS):
        one.step()
    assert opt._internal.iterations == 2 * STEPS and opt._last_tier == "cpu_fused"
    for a, b in zip(shared, alone):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(opt.state[a]["momentum"], one.state[b]["momentum"], rtol=0, atol=0)


_FORKS = r"""
import copy, multiprocessing, os
import numpy as np
import polyak
from polyak.tiers import background

def problem(shapes):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(12)]
    return weights, grads, polyak.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)

def steps(opt, weights, grads):
    for g in grads:
        opt.apply(g, weights)
    for _ in range(2):  # numba, then the kernel, is ready: the last step takes it
        background.wait()
        opt.apply(grads[-1], weights)
    return np.concatenate([w.ravel() for w in weights]), opt._last_tier

def replayed(snapshot, grads):
    # the same steps on the reference tier, which gives the fused tier's numbers bit for bit
    opt, weights = snapshot
    opt.fused = False
    return steps(opt, weights, grads)[0]

def forked(opt, weights, grads):
    snapshot = copy.deepcopy((opt, weights))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.environ["POLYAK_KERNEL_CACHE"] += f"-{os.getpid()}"  # leaves the parent's cache cold
        flat, tier = steps(opt, weights, grads)
        os.write(write, tier.encode().ljust(16) + flat.tobytes())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0, "the child failed"
    assert data[:16].decode().strip() == "cpu_fused", data[:16]
    assert np.array_equal(np.frombuffer(data[16:], np.float32), replayed(snapshot, grads)), "the numbers differ"
    return "ok"

weights, grads, opt = problem([(40, 30), (30,), (30, 10)])
opt.apply(grads[0], weights)  # numba's import is queued: fork at once
print("after the first step:", forked(opt, weights, grads[1:6]))
background.wait()
opt.apply(grads[1], weights)  # the first kernel's compile is queued: fork at once
assert opt._last_tier == "reference"
print("after the first compile is queued:", forked(opt, weights, grads[2:7]))

weights, grads, opt = problem([(1 << 18,), (64,)])
for g in grads[:3]:  # the address reader for 1-d weights, then the kernel, compile
    background.wait()
    opt.apply(g, weights)
assert opt._last_tier == "cpu_fused"  # a parallel kernel ran: numba's threads are started
print("after a parallel step:", forked(opt, weights, grads[3:6]))

def pooled(_):
    os.environ["POLYAK_KERNEL_CACHE"] += f"-{os.getpid()}"
    flat, tier = steps(opt, weights, grads[6:])
    return tier, flat.tobytes()

with multiprocessing.get_context("fork").Pool(2) as pool:
    results = pool.map(pooled, range(2))
want = replayed(copy.deepcopy((opt, weights)), grads[6:]).tobytes()
print("a pool:", [tier for tier, flat in results if flat == want])
"""


def test_a_forked_child_trains_to_the_parents_numbers(tmp_path):
    env = dict(os.environ, POLYAK_BACKGROUND_COMPILE="1", POLYAK_KERNEL_CACHE=str(tmp_path),
               PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", _FORKS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""
    assert out.stdout.splitlines() == ["after the first step: ok", "after the first compile is queued: ok",
                                       "after a parallel step: ok", "a pool: ['cpu_fused', 'cpu_fused']"]
