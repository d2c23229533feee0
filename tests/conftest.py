"""Keras 3 runs beside polyak as the reference, on its NumPy backend."""

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")
# Every step the fused tier can take takes it, the first included, so that tests see the tier
# they ask for; tests/test_background_compile.py turns background compiles on for itself.
os.environ.setdefault("POLYAK_BACKGROUND_COMPILE", "0")
