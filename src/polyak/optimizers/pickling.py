"""``pickle`` and ``copy.deepcopy`` of an optimizer, built and stepped or not."""

from __future__ import annotations

import threading


class Picklable:
    """Mixin for :class:`polyak.optimizers.Optimizer`: a copy continues the same trajectory."""

    def __getstate__(self):
        """For ``pickle`` and ``copy.deepcopy``: flat buffers and kernels are rebuilt on the next
        step, and what is keyed by object identity is keyed by weight position meanwhile."""
        state = dict(self.__dict__, _tier_cache=None, _per_weight_cache=(None, None), _trainable_variables_indices={})
        del state["_apply_lock"]
        built = self._trainable_variables
        state["_exclude_ids"] = frozenset(i for i, v in enumerate(built) if id(v) in self._exclude_ids)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._apply_lock = threading.RLock()
        built = self._trainable_variables
        self._trainable_variables_indices = {id(v): i for i, v in enumerate(built)}
        self._exclude_ids = frozenset(id(built[i]) for i in self._exclude_ids)
