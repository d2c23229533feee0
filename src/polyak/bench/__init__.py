"""The benchmark harness: ``python -m polyak.bench``."""
