"""Keras 3 runs beside polyak as the reference, on its NumPy backend."""

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")
