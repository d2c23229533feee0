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
# The suite writes into a folder of this session, removed at exit, never the user's caches:
# compiled kernels (set POLYAK_KERNEL_CACHE to keep them between runs: a cold folder compiles
# every kernel), Keras's keras.json and matplotlib's font list.
_SESSION = tempfile.mkdtemp(prefix="polyak-tests-")
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)
for _name, _folder in (("POLYAK_KERNEL_CACHE", "kernels"), ("KERAS_HOME", "keras"), ("MPLCONFIGDIR", "matplotlib")):
    if not os.environ.get(_name):
        os.environ[_name] = os.path.join(_SESSION, _folder)
