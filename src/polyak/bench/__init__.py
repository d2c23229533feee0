"""The benchmark harness: `polyak bench`, also `python -m polyak.bench`."""
