"""Keras 3 runs beside polyak as the reference, on its NumPy backend.

Triton kernels run in Triton's interpreter (on CPU tensors): Triton reads ``TRITON_INTERPRET``
when it is first imported, and other test modules (torch's compiler, Lightning) import it at
collection, so it is set here, before any of them.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "numpy")
os.environ.setdefault("TRITON_INTERPRET", "1")
# Every step the fused tier can take takes it, the first included, so that tests see the tier
# they ask for; tests/test_background_compile.py turns background compiles on for itself.
os.environ.setdefault("POLYAK_BACKGROUND_COMPILE", "0")
# Compiled kernels go to a folder of this session, removed at exit, never the user's cache
# (set POLYAK_KERNEL_CACHE to keep them between runs: a cold folder compiles every kernel).
if not os.environ.get("POLYAK_KERNEL_CACHE"):
    os.environ["POLYAK_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="polyak-test-kernels-")
    atexit.register(shutil.rmtree, os.environ["POLYAK_KERNEL_CACHE"], ignore_errors=True)
