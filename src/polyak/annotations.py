"""The types polyak's public signatures name, said once.

NumPy arrays, torch tensors and JAX arrays share no type a checker knows, so an array is
``Any``; the aliases say which of polyak's inputs each ``Any`` stands for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Union

if TYPE_CHECKING:
    from polyak.schedules import LearningRateSchedule

#: a NumPy array, torch tensor or JAX array (a number, where a scalar is meant)
Array = Any
#: a float, or a 0-d array or ``polyak.Variable`` holding one
Scalar = Any
#: weights or their gradients: a list of arrays (or of ``polyak.Variable``), or with JAX
#: arrays any pytree of them
Weights = Any
#: a float, a schedule of the step, or a zero-argument callable returning the rate
LearningRateLike = Union[float, "LearningRateSchedule", Callable[[], Any]]
#: a file's path
Path = Union[str, "os.PathLike[str]"]
#: the type of ``**kwargs`` that takes no keyword beyond the named ones: each raises, with a
#: hint; a type checker flags them at once
NoOtherKeyword = NoReturn
