"""The PyTorch face: see :mod:`polyak.torch`."""
