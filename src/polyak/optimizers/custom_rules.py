"""Custom optimizers written the Keras way: ``build`` and ``update_step`` on Variables.

Keras's guides write an optimizer as a subclass that makes its variables in ``build``
(``add_variable_from_reference``, ``add_variable``) and updates one weight at a time in
``update_step(gradient, variable, learning_rate)`` through ``self.assign``, ``assign_add`` and
``assign_sub``. A subclass that overrides ``update_step`` more recently than ``_update_rule``
(:func:`keras_style`) runs here as the ``update_rule`` stage of polyak's pure step
(:class:`UpdateStepRule`), as Keras's ``stateless_apply`` runs it:

* for the duration of the stage, the weights, the subclass's own variables, ``iteration`` and
  the stored ``learning_rate`` are *bound* to the values the step is working on (a private
  copy where arrays are written in place, the value itself where they are immutable);
* ``update_step`` runs once per descending weight, on those bindings;
* what it assigned is read back as the stage's output, and every Variable gets its own value
  back, also on an exception, so nothing of a ``jax.jit`` trace stays in a Variable.

The rest of the step (clipping, decay, EMA, accumulation, loss scale, constraints) wraps the
stage in Keras's order, on ``apply``, ``stateless_apply`` and under ``jax.jit``.

The base knows the role of its own variables (``state_roles``); the subclass's are *user
state*, carried through the step in the state's slot groups: one group per user variable,
holding its value at the first descending weight (``None`` elsewhere), so that the branches
of gradient accumulation (``bk.cond``, a ``jax.lax.cond`` under JAX) return it like any slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

from polyak.core.step import apply_step
from polyak.optimizers import parameters as params_mod
from polyak.optimizers.state_roles import ACCUMULATOR, AVERAGE, MASTER
from polyak.variable import Variable

_BASE_ROLES = (AVERAGE, ACCUMULATOR, MASTER)


@functools.lru_cache(maxsize=None)
def _defines_update_step_last(cls) -> bool:
    mro = cls.__mro__

    def definer(name):
        return next(i for i, c in enumerate(mro) if name in c.__dict__)

    return definer("update_step") < definer("_update_rule")


def keras_style(optimizer) -> bool:
    """Whether ``optimizer`` gives its update as Keras's ``update_step`` rather than as a pure
    ``_update_rule``: whichever its class (or the nearest base) defines last wins."""
    return _defines_update_step_last(type(optimizer))


class Bindings:
    """Variables and plain-array weights bound to a step's values for one stage call.

    A Variable is bound by swapping its value; a plain-array weight cannot be, so
    ``update_step`` receives a *handle* for it: a private copy (NumPy, torch), written in
    place by ``assign``, or the value itself (JAX), which ``assign`` replaces here.
    """

    def __init__(self, bk):
        self._bk = bk
        self._saved = []  #: ``(Variable, its own value)``, restored by :meth:`restore`
        self._handles = {}  #: ``id(handle) -> [weight index, current value, handle]``

    def _private(self, value):
        return self._bk.copy(value) if self._bk.writable(value) else value

    def bind(self, variable, value):
        self._saved.append((variable, variable._value))
        variable._value = self._private(value)

    def weight(self, weight, index, value):
        """What ``update_step`` receives for the built weight ``weight`` (at ``index``)."""
        if isinstance(weight, Variable):
            self.bind(weight, value)
            return weight
        handle = self._private(value)
        self._handles[id(handle)] = [index, handle, handle]
        return handle

    def index_of(self, handle):
        entry = self._handles.get(id(handle))
        return None if entry is None else entry[0]

    def value_of(self, handle):
        """The current value of a weight handle, a Variable or a plain array."""
        entry = self._handles.get(id(handle))
        return entry[1] if entry is not None else params_mod.value_of(handle)

    def replaces(self, handle) -> bool:
        """Whether assigning ``handle`` replaces its value here (an immutable plain array)."""
        return id(handle) in self._handles and not self._bk.writable(handle)

    def replace(self, handle, value, what):
        entry = self._handles[id(handle)]
        value = self._bk.cast(self._bk.asarray(value), entry[1].dtype)
        if tuple(value.shape) != tuple(entry[1].shape):
            raise ValueError(f"The shape of the value assigned to {what} must match its shape "
                             f"{tuple(entry[1].shape)}. Received: value.shape={tuple(value.shape)}")
        entry[1] = value

    def restore(self):
        for variable, value in reversed(self._saved):
            variable._value = value
        self._saved.clear()


class KerasPrimitives:
    """Mixin for :class:`polyak.optimizers.Optimizer`: Keras's per-variable primitives, which
    inside a Keras-style ``update_step`` act on the step's values (see :class:`Bindings`)."""

    _bindings = None  #: the :class:`Bindings` of the ``update_step`` calls under way, if any

    def assign(self, variable: Any, value: Any) -> None:
        """Set ``variable`` (a Variable or a plain array) to ``value``."""
        value = params_mod.value_of(value)
        bindings = self._bindings
        if bindings is not None and bindings.replaces(variable):
            bindings.replace(variable, value, f"trainable variable {bindings.index_of(variable)}")
        else:
            params_mod.write(variable, value, self._backend)

    def _current(self, variable):
        bindings = self._bindings
        return params_mod.value_of(variable) if bindings is None else bindings.value_of(variable)

    def assign_add(self, variable: Any, value: Any) -> None:
        self.assign(variable, self._current(variable) + params_mod.value_of(value))

    def assign_sub(self, variable: Any, value: Any) -> None:
        self.assign(variable, self._current(variable) - params_mod.value_of(value))

    def _get_variable_index(self, variable):
        """The position of ``variable`` among the built weights (also of the handle that
        ``update_step`` receives for a plain-array weight)."""
        bindings = self._bindings
        index = None if bindings is None else bindings.index_of(variable)
        return self._trainable_variables_indices[id(variable)] if index is None else index


@contextlib.contextmanager
def _bound(optimizer, bk):
    bindings = Bindings(bk)
    optimizer._bindings = bindings
    try:
        yield bindings
    finally:
        bindings.restore()
        optimizer._bindings = None


class UpdateStepRule:
    """The ``update_rule`` stage of a Keras-style optimizer for one step: ``update_step`` on
    each descending weight, with user state in the slot groups (see the module docstring).
    Without ``kernel_lines``, no fused tier takes it. ``Optimizer._plan`` holds one that
    :func:`step` completes with what only a step knows: which weights descend."""

    def __init__(self, optimizer, descending=None, user_variables=(), scalars=()):
        self.optimizer = optimizer
        self.descending = descending  #: the indices of the weights the stage receives, in order
        self.user_variables = user_variables
        self.scalars = scalars  #: ``(Variable, value)``: iteration, stored rate, skipped count

    def __call__(self, bk, grads, params, slots, learning_rate):
        opt = self.optimizer
        if self.descending is None:
            raise RuntimeError("A Keras-style update rule runs inside `Optimizer._step`, which knows the weights.")
        with _bound(opt, bk) as bindings:
            for variable, value in self.scalars:
                bindings.bind(variable, value)
            for variable, group in zip(self.user_variables, slots):
                bindings.bind(variable, group[0])
            handles = [bindings.weight(opt._trainable_variables[i], i, w) for i, w in zip(self.descending, params)]
            for gradient, handle in zip(grads, handles):
                opt.update_step(gradient, handle, learning_rate)
            new_params = [bindings.value_of(h) for h in handles]
            new_user = [v._value for v in self.user_variables]
        rest = [None] * (len(params) - 1)
        return new_params, tuple([value, *rest] for value in new_user)


def step(optimizer, param_values, optimizer_values, grads):
    """``Optimizer._step`` for a Keras-style optimizer: the pure step with
    :class:`UpdateStepRule` as its update rule; the same arguments and results."""
    bk = optimizer._backend
    roles = optimizer.state_roles
    base = roles._replace(per_weight=tuple((r, v) for r, v in roles.per_weight if r in _BASE_ROLES))
    variables = optimizer._variables
    position = {id(v): k for k, v in enumerate(variables)}
    known = base.keys()
    user = [v for v in variables if id(v) not in known]
    plan = optimizer._plan()
    descending = [i for i, g in enumerate(grads) if g is not None and not plan.overwrite[i]]
    first = descending[0] if descending else None
    groups = tuple(tuple(optimizer_values[position[id(v)]] if i == first else None for i in range(len(grads)))
                   for v in user)
    state = base.state_from(variables, optimizer_values)._replace(slots=groups)
    scalars = [(v, optimizer_values[position[id(v)]]) for _, v in roles.scalars()]
    rule = UpdateStepRule(optimizer, descending, user, scalars)
    with bk.step_context():
        new_params, new_state = apply_step(dataclasses.replace(plan, rule=rule), bk, param_values, state, grads)
    values = base.values_from(variables, new_state, optimizer_values)
    if first is not None:
        for v, group in zip(user, new_state.slots):
            values[position[id(v)]] = group[first]
    return new_params, values
