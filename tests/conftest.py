"""Keras 3 runs beside polyak as the reference, on its NumPy backend.

Triton kernels run in Triton's interpreter (on CPU tensors): Triton reads ``TRITON_INTERPRET``
when it is first imported, and other test modules (torch's compiler, Lightning) import it at
collection, so it is set here, before any of them.
"""

import atexit
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "numpy")
os.environ.setdefault("TRITON_INTERPRET", "1")
# Every step the fused tier can take takes it, the first included, so that tests see the tier
# they ask for; tests/test_background_compile.py turns background compiles on for itself.
os.environ.setdefault("POLYAK_BACKGROUND_COMPILE", "0")
# The suite writes into temporary folders only, never the user's caches: Keras's keras.json and
# matplotlib's font list into a folder of this session, removed at exit; compiled kernels into
# a private folder under the temporary directory kept between runs (a cold folder compiles every
# kernel, minutes of the suite), one per version of the kernels' building blocks and of numba, whose
# cache does not notice a change in the helpers a kernel calls.
_SESSION = tempfile.mkdtemp(prefix="polyak-tests-")
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)


def _kernel_folder() -> str:
    digest = hashlib.sha256()
    for name in ("cpu_kernels.py", "cpu_codegen.py"):
        digest.update((pathlib.Path(__file__).parents[1] / "src" / "polyak" / "tiers" / name).read_bytes())
    try:
        digest.update(importlib.metadata.version("numba").encode())
    except importlib.metadata.PackageNotFoundError:
        pass
    return os.path.join(tempfile.gettempdir(), f"polyak-test-kernels-{os.getuid()}-{digest.hexdigest()[:12]}")


for _name, _folder in (("POLYAK_KERNEL_CACHE", _kernel_folder()), ("KERAS_HOME", os.path.join(_SESSION, "keras")),
                       ("MPLCONFIGDIR", os.path.join(_SESSION, "matplotlib"))):
    if not os.environ.get(_name):
        os.environ[_name] = _folder


#: Left out of the quick selection (``-m "not slow"``): fresh processes, process groups, the
#: whole option grid against Keras (the quick selection keeps a fifth of it, the schedules and
#: the reference tier), long runs.
SLOW_MODULES = {
    "test_clean_exit", "test_cli", "test_demo", "test_doc_blocks", "test_distributed_ddp", "test_distributed_failures",
    "test_distributed_fsdp", "test_distributed_jax", "test_distributed_overlap", "test_distributed_sharded",
    "test_distributed_zero1", "test_examples", "test_fork_and_threads", "test_gpu_check", "test_jax_x64",
    "test_kernel_cache", "test_long_runs", "test_newcomer", "test_resume", "test_torch_integrations",
}
SLOW_TESTS = {"test_grid_matches_keras", "test_clipping_by_norm_is_bit_identical_when_the_norm_is_exact"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.path.stem in SLOW_MODULES or getattr(item, "originalname", None) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
