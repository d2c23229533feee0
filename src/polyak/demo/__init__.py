"""``polyak demo``: an MLP trained on scikit-learn's digits with polyak's SGD.

Forward and backward passes are NumPy (:mod:`polyak.demo.mlp`); the optimizer
is the recipe of :mod:`polyak.demo.optimizer`; :func:`run` trains, evaluates
with raw and EMA weights each epoch, checkpoints, and writes the report.
scikit-learn, Matplotlib and tqdm are imported only when a run starts.
"""

from polyak.demo.errors import DemoError
from polyak.demo.job import run
from polyak.demo.settings import Settings

__all__ = ["DemoError", "Settings", "run"]
