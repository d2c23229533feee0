"""One fused call, as the stages describe it: statements per element, scalars, the kernel's key.

The fused tiers fill a :class:`KernelCall` by running every stage's ``kernel`` (see
:mod:`polyak.core.stages`) and turn its statements into their kernel language.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from polyak.core import nonfinite

#: How accumulation shapes a call: no accumulation, a call that only accumulates, the
#: call that updates from the accumulated mean.
DIRECT, ACCUMULATE, FROM_ACCUMULATED = 0, 1, 2


@dataclass
class KernelCall:
    """One fused call, as the stages describe it. The tier supplies the raw ``iteration``,
    the stored rate, the array namespace, casts to the weights' dtype, and
    ``sum_squares(call)``: per tensor, the float64 sum of squares of the gradient after
    the call's gradient statements so far."""

    iteration: int
    stored_learning_rate: Any
    xp: Any
    cast: Callable[[Any], Any]  #: a scalar in the weights' dtype
    cast_array: Callable[[Any], Any]  #: an array in the weights' dtype
    sum_squares: Callable[["KernelCall"], Any]
    learning_rate: Any = None
    mode: int = DIRECT
    key: list = field(default_factory=list)  #: what selects the compiled kernel
    #: ``(kind, statement)`` in order; kind "gradient" transforms ``x``, "decayed" runs only for
    #: weights subject to decay, "update" is the rest
    body: list = field(default_factory=list)
    scalars: dict = field(default_factory=dict)
    roles: list = field(default_factory=list)  #: the state buffers the kernel reads, by role name
    denominators: Any = None  #: per tensor, for norm clipping
    decays: bool = False
    #: with a guard: what the step computed that must all be finite for it to run (the check
    #: pass's sums, clipping's norms: ``polyak.core.nonfinite``)
    checked: list = field(default_factory=list)

    def add(self, key, gradient=(), decayed=(), lines=(), scalars=None, roles=()):
        self.key.append(key)
        self.body += [("gradient", s) for s in gradient] + [("decayed", s) for s in decayed]
        self.body += [("update", s) for s in lines]
        self.scalars.update({name: self.cast(value) for name, value in (scalars or {}).items()})
        self.roles += [r for r in roles if r not in self.roles]

    def check(self, plan, value):
        """Take ``value`` (computed by the step) into ``checked`` when ``plan``'s guard looks at it."""
        if nonfinite.looks_at(plan, nonfinite.COMPUTED):
            self.checked.append(value)

    def probe(self, gradient, scalars):
        """A copy of this call with ``gradient`` statements and ``scalars`` added, for a pass over
        the gradient as they make it; this call is left as it is."""
        probe = dataclasses.replace(self, key=list(self.key), body=list(self.body), scalars=dict(self.scalars),
                                    roles=list(self.roles), checked=[])
        probe.add(key="probe", gradient=gradient, scalars=scalars)
        return probe

    def gradient_statements(self) -> tuple:
        return tuple(s for kind, s in self.body if kind == "gradient")
