"""The kernel cache: a private folder, and kernels found there loaded at the first step (issue 24).

numba's cache files are pickles run as code, so polyak keeps them only in a folder of the
user's own: made with mode 0700, refused (with a warning, and kernels compiled without a
disk cache) when another user owns it or others may write it. A kernel found compiled there
is loaded in the foreground, so in a fresh process the first step that can take the fused
tier takes it, with background compiles on.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import polyak
from polyak.tiers import cpu_codegen, cpu_fused, kernel_cache

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="numba is not installed")

ROOT = Path(__file__).resolve().parents[1]


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_folder_is_made_private(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "kernels"
    monkeypatch.setenv("POLYAK_KERNEL_CACHE", str(folder))
    assert kernel_cache.folder() == folder
    assert _mode(folder) == 0o700 and os.stat(folder).st_uid == os.geteuid()


def test_a_folder_of_ones_own_that_others_cannot_write_is_taken(tmp_path, monkeypatch):
    os.chmod(tmp_path, 0o755)
    monkeypatch.setenv("POLYAK_KERNEL_CACHE", str(tmp_path))
    assert kernel_cache.folder() == tmp_path


def _another_users(path):
    os.chown(path, os.geteuid() + 4242, -1)


@pytest.mark.parametrize("spoil, reason", [
    (_another_users, "is owned by uid"),
    (lambda path: os.chmod(path, 0o777), "has mode 0777: others can write it"),
    (lambda path: os.chmod(path, 0o770), "has mode 0770: others can write it"),
], ids=["another-owner", "0777", "group-writable"])
def test_a_folder_that_is_not_private_is_refused(tmp_path, monkeypatch, spoil, reason):
    if os.geteuid() != 0 and spoil is _another_users:
        pytest.skip("only root can give a folder to another user")
    folder = tmp_path / "kernels"
    folder.mkdir()
    spoil(folder)
    monkeypatch.setenv("POLYAK_KERNEL_CACHE", str(folder))
    with pytest.warns(RuntimeWarning, match=f"{folder} {reason}.*without a disk cache"):
        assert kernel_cache.folder() is None


def test_a_file_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "kernels"
    path.write_text("")
    monkeypatch.setenv("POLYAK_KERNEL_CACHE", str(path))
    with pytest.warns(RuntimeWarning, match="cannot be made"):
        assert kernel_cache.folder() is None


def test_without_a_private_folder_kernels_compile_in_memory_and_nothing_is_written(tmp_path, monkeypatch):
    folder = tmp_path / "kernels"
    folder.mkdir()
    os.chmod(folder, 0o777)
    monkeypatch.setenv("POLYAK_KERNEL_CACHE", str(folder))
    monkeypatch.setattr(cpu_codegen, "_loaded", {})  # the kernel is written and compiled anew
    monkeypatch.setattr(cpu_codegen, "_compiled", set())
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(7, 3)).astype(np.float32)]
    reference = [w.copy() for w in weights]
    grads = [rng.normal(size=(7, 3)).astype(np.float32)]
    fused, plain = polyak.SGD(learning_rate=0.1, momentum=0.5), polyak.SGD(learning_rate=0.1, momentum=0.5)
    plain.fused = False
    with pytest.warns(RuntimeWarning, match="without a disk cache"):
        fused.apply(grads, weights)
    plain.apply(grads, reference)
    assert fused._last_tier == "cpu_fused" and list(folder.iterdir()) == []
    np.testing.assert_array_equal(weights[0], reference[0])


_FIRST_STEPS = r"""
import numpy as np, torch
import polyak, polyak.torch
rng = np.random.default_rng(0)
shapes = [(48, 32), (32,), (32, 8)]
weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
opt = polyak.SGD(learning_rate=0.1, momentum=0.9)
opt.apply([np.ones_like(w) for w in weights], weights)
params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in weights]
for p in params:
    p.grad = torch.ones_like(p)
face = polyak.torch.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
face.step()
print(opt._last_tier, face._last_tier)
"""


def _first_tiers(cache, background):
    env = dict(os.environ, POLYAK_BACKGROUND_COMPILE=background, POLYAK_KERNEL_CACHE=str(cache),
               PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", _FIRST_STEPS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.split()


def test_with_the_kernel_on_disk_a_fresh_process_takes_the_fused_tier_at_its_first_step(tmp_path):
    assert _first_tiers(tmp_path, background="0") == ["cpu_fused", "cpu_fused"]  # compiles, fills the cache
    assert _first_tiers(tmp_path, background="1") == ["cpu_fused", "cpu_fused"]
