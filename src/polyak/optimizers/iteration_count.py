"""The iteration count: an int64 optimizer variable on the weights' device, with a copy on the host.

The step's decisions that depend on the count (whether a call updates or only accumulates,
whether EMA overwrites the weights, the schedule's step in the fused tiers) are taken on the
host. Reading the device count back for them would synchronise the host with a CUDA stream on
every step, so :class:`CountVariable` keeps the count twice: the device value (what
``variables``, checkpoints and ``stateless_apply`` see) and ``host`` (a Python int), kept in
step by every write:

* ``assign`` of a host value (a number, a NumPy array, a CPU tensor: ``set_weights``,
  ``load_own_variables``, checkpoints) sets both;
* ``assign`` of a device array (the reference step's new count) leaves the host copy unknown,
  unless the writer says what it is (``assign(value, host=n)``);
* ``advance()`` (the fused tiers) adds one on the device, without a host copy, and to ``host``;
  ``advance(finite)`` (a guarded step) adds one only where ``finite`` holds: a Python bool
  keeps the host copy, a flag on the device leaves it unknown.

An unknown host copy is read back from the device once, when ``host`` is next asked for.
The copy serves ``apply`` only: ``stateless_apply`` reads the values it is given.
"""

from __future__ import annotations

import numpy as np

from polyak.backends.kinds import host_array
from polyak.variable import Variable


class CountVariable(Variable):
    """An integer count variable that also keeps its value on the host (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._host = _on_host(self._value)

    @property
    def host(self) -> int:
        """The count as a Python int; read back from the device only when it is not known."""
        if self._host is None:
            self._host = int(self.numpy())
        return self._host

    @property
    def known_host(self):
        """The host copy when it is known without reading the device, else None."""
        return self._host

    def assign(self, value, host=None):
        """Set the count; ``host``: its value as a Python int, when the writer knows it
        (``value`` is then not read back)."""
        result = super().assign(value)
        self._host = int(host) if host is not None else _on_host(value)
        return result

    def advance(self, finite=True):
        """Count one more call: ``count + 1`` on the device (no host copy) and on the host,
        saturating as the backend's ``increment`` does. ``finite``: whether the call counts,
        a Python bool or a boolean flag on the device (see the module)."""
        if finite is False:
            return
        known = self._host
        bk = self._backend
        if finite is True:
            super().assign(bk.increment(self._value))
            self._host = None if known is None else min(known + 1, int(np.iinfo(np.dtype(self.dtype)).max))
            return
        super().assign(bk.cond(finite, lambda: bk.increment(self._value), lambda: self._value))
        self._host = None

    def _move_to(self, backend, dtype=None):
        super()._move_to(backend, dtype)
        self._host = _on_host(self._value) if self._host is None else self._host


def _on_host(value):
    """``value`` as a Python int when it is readable without a device transfer, else None."""
    array = host_array(value)
    return None if array is None else int(array)
