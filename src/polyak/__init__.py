"""polyak: Keras 3's SGD with momentum (every argument, method and number) on NumPy, PyTorch and JAX arrays."""

from polyak import optimizers, schedules
from polyak.naming import clear_session
from polyak.optimizers import SGD, LossScaleOptimizer, Optimizer
from polyak.saving import load, save
from polyak.serialization import register
from polyak.variable import Variable

__version__ = "0.1.0"
__all__ = ["Optimizer", "SGD", "LossScaleOptimizer", "Variable", "optimizers", "schedules", "register", "save", "load",
           "clear_session", "__version__"]
