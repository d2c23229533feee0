"""What one reference step works on (:class:`Values`), made per call so the step stays pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyak.core import nonfinite


@dataclass
class Values:
    """What one reference step works on; made per call, never shared, so the step stays pure."""

    originals: list  #: the weights as given
    params: list  #: per weight, as updated so far (masters in place of 16-bit weights)
    grads: list  #: per weight; None where a weight has no gradient
    state: Any  #: the OptimizerState the step started from
    accumulators: list
    slots: list  #: one list per slot kind
    averages: tuple
    masters: tuple = ()
    descending: list = field(default_factory=list)  #: indices of the weights that descend
    learning_rate: Any = None
    #: in the descent: the descending weights' gradients, values and slots, as updated so far
    g: list = field(default_factory=list)
    w: list = field(default_factory=list)
    s: tuple = ()
    mask: list = field(default_factory=list)
    iteration: Any = None  #: the count after the step
    host_iteration: Any = None  #: ``state.iteration`` as a Python int when known without a device read
    finite: Any = None  #: with a guard, whether what it looked at so far is finite (None: nothing yet)

    def check(self, plan, bk, values):
        """Take ``values`` into ``finite`` when ``plan``'s guard looks at what the step computes."""
        self.finite = nonfinite.both(bk.xp, self.finite, nonfinite.computed(plan, bk.xp, values))

    @property
    def count(self):
        """The count before the step, for decisions: the host copy when known (no device read)."""
        return self.state.iteration if self.host_iteration is None else self.host_iteration

    def rate(self, bk, function):
        """``function(count, stored rate)`` at the count before the step: on the host count when known
        (a schedule in NumPy: Keras's cos, pow, log), its value then a 0-d array made on the device."""
        if self.host_iteration is None:  # traced (jax.jit), or values given to stateless_apply
            return function(self.state.iteration, self.state.learning_rate)
        rate = function(np.int64(self.host_iteration), self.state.learning_rate)
        return bk.cast(rate, bk.dtype(rate.dtype)) if isinstance(rate, (np.generic, np.ndarray)) else rate
