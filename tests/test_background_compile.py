"""The fused CPU tier's kernels compile in a background thread while the reference tier steps.

The suite runs with ``POLYAK_BACKGROUND_COMPILE=0`` (conftest), so that every other test sees
the fused tier from the first step; these tests turn it on with a compiler of their own, whose
single worker they hold on a gate: what runs in the background, and when, is then decided by
the test, not by timing.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import polyak
from polyak.tiers import background, cpu_codegen, cpu_fused

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="numba is not installed")

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(6, 5), (5,), (5, 3), (3,)]
#: a configuration whose fused and reference steps are bit-identical; two accumulation phases
#: (two kernels), decay with an excluded weight, clipping by value, EMA with overwrite
OPTIONS = dict(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clipvalue=0.5, use_ema=True,
               ema_overwrite_frequency=3, gradient_accumulation_steps=2)


class Gated:
    """A fresh compiler whose worker is held on ``gate`` until the test opens it."""

    def __init__(self):
        self.compiler = background.Compiler()
        self.gate = threading.Event()
        self.held = threading.Event()
        self.compiler.ready("gate", lambda: (self.held.set(), self.gate.wait(timeout=60)))
        assert self.held.wait(timeout=60)

    def open(self):
        self.gate.set()
        self.compiler.wait()


@pytest.fixture
def gated(monkeypatch, tmp_path):
    """Background compiles on, into a gated compiler, with a cold kernel cache: an empty cache
    folder, and no kernel counted as compiled in this process (numba's dispatchers are kept,
    so the jobs are quick once the gate opens)."""
    monkeypatch.setenv("POLYAK_BACKGROUND_COMPILE", "1")
    monkeypatch.setenv("POLYAK_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_codegen, "_compiled", set())
    gated = Gated()
    monkeypatch.setattr(background, "COMPILER", gated.compiler)
    yield gated
    gated.gate.set()
    gated.compiler.close()


def _problem(backend, seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(9)]
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return [torch.nn.Parameter(torch.from_numpy(v)) for v in values], \
            [[torch.from_numpy(g) for g in step] for step in grads]
    return [polyak.Variable(v, name=f"w{i}") for i, v in enumerate(values)], grads


def _numpy(x):
    return np.array(x.detach() if hasattr(x, "detach") else x, copy=True)


def _run(backend, fused=True, after_step=lambda step: None):
    """Every step's weights and optimizer variables, and the tier that ran each step."""
    weights, grads = _problem(backend)
    opt = polyak.SGD(**OPTIONS)
    opt.exclude_from_weight_decay(var_list=[weights[1]])
    opt.fused = fused
    history, tiers = [], []
    for step, g in enumerate(grads):
        opt.apply(g, weights)
        tiers.append(opt._last_tier)
        history.append([_numpy(x) for x in list(weights) + list(opt.variables)])
        after_step(step)
    return history, tiers


def _assert_identical(got, want):
    for step, (a, b) in enumerate(zip(got, want)):
        for k, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_array_equal(x, y, err_msg=f"step {step}: entry {k}")
            assert x.dtype == y.dtype


def test_the_first_apply_does_not_wait_for_the_compile(gated):
    weights, grads = _problem("numpy")
    opt = polyak.SGD(learning_rate=0.1, momentum=0.9)
    opt.apply(grads[0], weights)  # would hang until the gate's timeout if it waited for its kernel
    assert not gated.gate.is_set() and opt._last_tier == "reference"
    opt.apply(grads[1], weights)
    assert opt._last_tier == "reference"
    gated.open()  # numba loaded; the kernel is queued by the next step
    opt.apply(grads[2], weights)
    assert opt._last_tier == "reference"
    gated.compiler.wait()
    opt.apply(grads[3], weights)
    assert opt._last_tier == "cpu_fused"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_run_that_switches_tiers_equals_the_fused_and_the_reference_runs(backend, gated, monkeypatch):
    def release_after_the_third_step(step):
        if step >= 2:
            gated.open()

    switching, tiers = _run(backend, after_step=release_after_the_third_step)
    assert tiers[:3] == ["reference"] * 3 and tiers[-1] == "cpu_fused"
    monkeypatch.setenv("POLYAK_BACKGROUND_COMPILE", "0")
    fused, fused_tiers = _run(backend)
    assert set(fused_tiers) == {"cpu_fused"}
    reference, reference_tiers = _run(backend, fused=False)
    assert set(reference_tiers) == {"reference"}
    _assert_identical(switching, reference)
    _assert_identical(fused, reference)


@pytest.mark.parametrize("clipping", [dict(global_clipnorm=1.0), dict(clipnorm=0.5)])
def test_norm_clipping_compiles_in_the_foreground(gated, clipping):
    """The fused tier sums norms in another order than the reference: its first step must not
    depend on when a background compile finishes."""
    weights, grads = _problem("numpy", seed=1)
    opt = polyak.SGD(learning_rate=0.1, momentum=0.9, **clipping)
    opt.apply(grads[0], weights)
    assert opt._last_tier == "cpu_fused" and not gated.gate.is_set()


def test_without_background_compiles_the_first_step_is_fused(monkeypatch):
    monkeypatch.setenv("POLYAK_BACKGROUND_COMPILE", "0")
    weights, grads = _problem("numpy", seed=2)
    opt = polyak.SGD(learning_rate=0.1, momentum=0.5)
    opt.apply(grads[0], weights)
    assert opt._last_tier == "cpu_fused"


def test_a_failing_job_leaves_the_step_to_the_foreground():
    compiler = background.Compiler()

    def fail():
        raise RuntimeError("compile failed")

    assert not compiler.ready("k", fail)
    compiler.wait()
    assert compiler.ready("k", fail)


_CHILD = """
import sys
sys.path.insert(0, {root!r})
{block}
import numpy as np
import polyak
rng = np.random.default_rng(0)
weights = [polyak.Variable(rng.normal(size=s).astype(np.float32), name=str(i)) for i, s in enumerate([(40, 30), (30,)])]
opt = polyak.SGD(learning_rate=0.1, momentum=0.9, use_ema=True)
for _ in range(3):
    opt.apply([rng.normal(size=w.shape).astype(np.float32) for w in weights], weights)
print(opt._last_tier, float(sum(np.abs(np.asarray(w)).sum() for w in weights)))
"""


def _child(tmp_path, block=""):
    env = dict(os.environ, POLYAK_BACKGROUND_COMPILE="1", POLYAK_KERNEL_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT / "src"), block=block)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout.split()


def test_a_process_exits_cleanly_while_its_kernel_compiles_and_without_numba(tmp_path):
    """The process ends while numba loads for its cold kernel (it finishes that job at exit;
    ``test_clean_exit`` ends processes under a kernel's compile); without numba the reference
    tier takes every step, with the same numbers."""
    tier, total = _child(tmp_path)
    missing_tier, missing_total = _child(tmp_path, block='sys.modules["numba"] = None  # as if not installed')
    assert missing_tier == "reference" and total == missing_total
