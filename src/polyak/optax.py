"""``sgd``: polyak's SGD as an optax ``GradientTransformationExtraArgs``.

For code that holds its optimizer as an optax transformation: Flax's
``TrainState``, ``flax.nnx.Optimizer``, Equinox's ``init``/``update`` with
``eqx.apply_updates``, ``optax.chain``, ``optax.MultiSteps``.

This module only translates. Each ``init`` and each traced ``update`` builds a
private :class:`polyak.SGD` on the parameter tree it is given (building is
cheap Python; under ``jax.jit`` its zero-filled variables are dead code), and
``update`` is that optimizer's ``stateless_apply``: every stage of the step
(loss scale, accumulation, clipping, decay, momentum, EMA and its overwrite,
master weights, the non-finite guard) is polyak's, with Keras 3's numbers.
The optimizer state travels as an :class:`SGDState` between the calls.

Importing it imports JAX and optax; ``import polyak`` does not import it.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import polyak
from polyak import arguments, options, rates
from polyak.annotations import NoOtherKeyword
from polyak.schedules import LearningRateSchedule

__all__ = ["sgd", "SGDState", "ema_params"]

_PER_WEIGHT = (  # SGDState field, and the role (``polyak.SGD().state_roles``) of the variables that fill it
    ("averages", "average"),
    ("accumulators", "gradient_accumulator"),
    ("momentums", "momentum"),
    ("masters", "master"),
)


class SGDState(NamedTuple):
    """The state of :func:`sgd`: polyak's optimizer variables, grouped by role.

    Each per-weight field is a tree shaped like the params (so it shards like
    them), or None when the configuration keeps no such state.
    """

    #: raw ``update`` calls (the schedule's step; ``gradient_accumulation_steps``
    #: calls make one update). int32, or int64 with ``jax_enable_x64``.
    iteration: Any
    #: ``use_ema``: the moving averages of the weights.
    averages: Any = None
    #: ``gradient_accumulation_steps``: the sums of the gradients of the current cycle.
    accumulators: Any = None
    #: ``momentum != 0``: the velocities.
    momentums: Any = None
    #: ``master_weights``: a float32 copy of each float16/bfloat16 weight, None for the others.
    masters: Any = None
    #: ``skip_nonfinite``: the count of steps skipped for an inf/NaN gradient.
    skipped: Any = None


class _CountSchedule(LearningRateSchedule):
    """An optax schedule (a function of the step count) as a polyak schedule."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, step):
        return self.schedule(step)

    def __repr__(self):
        return repr(self.schedule)


def sgd(learning_rate: float | LearningRateSchedule | Callable[[Any], Any] = 0.01, momentum: float = 0.0,
        nesterov: bool = False, *, weight_decay: float | None = None,
        exclude_from_weight_decay: Sequence[str] | None = None, weight_decay_mask: Any = None,
        clipnorm: float | None = None, clipvalue: float | None = None, global_clipnorm: float | None = None,
        use_ema: bool = False, ema_momentum: float = 0.99, ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None, gradient_accumulation_steps: int | None = None,
        master_weights: bool = False, skip_nonfinite: bool = False,
        **kwargs: NoOtherKeyword) -> optax.GradientTransformationExtraArgs:
    """Keras 3's SGD (polyak's) as an optax transformation.

    The arguments are :class:`polyak.SGD`'s, with the same math: with velocity
    ``v`` and decoupled decay applied first, ``w <- w - lr * weight_decay * w``,
    then ``v <- momentum * v - lr * g`` and ``w <- w + v`` (Nesterov:
    ``w <- w + momentum * v - lr * g``). Besides them:

    Args:
        momentum, nesterov, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
        ema_momentum, ema_overwrite_frequency, gradient_accumulation_steps, master_weights,
        skip_nonfinite: as :class:`polyak.SGD`'s, checked as it checks them (``polyak.options``).
        learning_rate: a float, a polyak schedule, or an optax schedule (any
            other callable, called with the step count). Schedules are called
            with the raw count of ``update`` calls, as Keras calls its
            schedules, inside the traced step: traced once for the whole run.
        exclude_from_weight_decay: strings; no decay for the weights whose key
            path (``"dense/bias"`` for ``params["dense"]["bias"]``) contains
            one of them (a regex search, as ``polyak.SGD.exclude_from_weight_decay``).
        weight_decay_mask: optax's way: a tree of bools shaped like the params
            (True: decay), or a function of the params returning one. A weight
            is decayed when the mask says so and no string above excludes it.
        loss_scale_factor: the gradients are divided by it (scale the loss
            yourself).

    Returns:
        An ``optax.GradientTransformationExtraArgs``. ``init(params)`` is pure
        and takes any tree of float arrays (``None`` leaves, as in Equinox's
        filtered trees, and ``flax.nnx.Variable`` leaves, unwrapped, are
        welcome). ``update(grads, state, params)`` requires ``params`` (decay
        and the EMA read them) and returns ``(updates, state)`` with
        ``updates = new_params - params``, the new params being
        ``polyak.SGD.stateless_apply``'s. ``optax.apply_updates(params,
        updates)`` computes ``params + updates`` in the params' dtype, and
        both operations round: where a weight and its new value are within a
        factor 2 of each other (the difference is then exact, by Sterbenz's
        lemma) the result is polyak's new weight bit for bit; a weight that
        changes more (crossing zero, overwritten by its EMA) can land an ulp
        away from it. Bad trees (grads or state not shaped like the params, a
        mask that does not match them, a non-float leaf) raise at trace time,
        naming the leaf's path.

    Example::

        >>> import jax.numpy as jnp, optax
        >>> from polyak.optax import sgd
        >>> params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
        >>> tx = sgd(0.1, momentum=0.9, weight_decay=0.5, exclude_from_weight_decay=["b"])
        >>> state = tx.init(params)
        >>> grads = {"w": jnp.array([1.0, 1.0]), "b": jnp.array(1.0)}
        >>> updates, state = tx.update(grads, state, params)
        >>> new = optax.apply_updates(params, updates)   # w: decayed by 5%, then -0.1
        >>> [round(x, 6) for x in new["w"].tolist()], round(float(new["b"]), 6)
        ([0.85, 1.8], 0.4)
        >>> [round(x, 6) for x in state.momentums["w"].tolist()]
        [-0.1, -0.1]
    """
    if kwargs:
        raise arguments.not_recognized(options.OPTAX, kwargs, options.names(options.OPTAX))
    if rates.varies(learning_rate) and not isinstance(learning_rate, LearningRateSchedule):
        learning_rate = _CountSchedule(_step_function(learning_rate))
    given = dict(
        learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
        ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
        loss_scale_factor=loss_scale_factor, gradient_accumulation_steps=gradient_accumulation_steps,
        master_weights=master_weights, skip_nonfinite=skip_nonfinite,
        exclude_from_weight_decay=exclude_from_weight_decay, weight_decay_mask=weight_decay_mask,
    )
    options.check_one_clipping(given)
    values = options.checked(options.of_face(options.OPTAX), given, options.OPTAX)  # every check, now
    excluded_names = values.pop("exclude_from_weight_decay") or []
    del values["weight_decay_mask"]  # a tree or a function of the params: checked against them at init
    config = dict(values, name="sgd")

    def build(params):
        opt = polyak.SGD(**config)
        leaves = jax.tree_util.tree_leaves(params)
        spared = [leaf for leaf, decays in zip(leaves, _mask_leaves(weight_decay_mask, params)) if not decays]
        opt.exclude_from_weight_decay(var_list=spared, var_names=excluded_names)
        opt.build(params)
        return opt, _Layout(opt, leaves, jax.tree_util.tree_structure(params))

    def init_fn(params):
        params = _pure(params)
        opt, layout = build(params)
        return layout.state([v.value for v in opt.variables])

    @jax.jit
    def _update(grads, state, params):
        opt, layout = build(params)
        values = layout.values(state, [v.value for v in opt.variables])
        new_params, new_values = opt.stateless_apply(values, grads, params)
        updates = jax.tree_util.tree_map(lambda new, old: new - old, new_params, params)
        return updates, layout.state(new_values)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("`params` is required: polyak's `sgd` reads the weights (decoupled weight decay, "
                             "EMA). Call `update(grads, state, params)`. Received: params=None")
        if not isinstance(state, SGDState):
            raise TypeError("`state` must be the SGDState that this transformation's `init` returned. "
                            f"Received: state of type {type(state).__name__}")
        return _update(_pure(updates), state, _pure(params))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ema_params(state: Any) -> Any:
    """The moving averages of the weights (``use_ema=True``) as a params tree.

    ``state`` is :func:`sgd`'s state, or any state tree that holds exactly one
    (an ``optax.chain``'s tuple, ``optax.MultiSteps``'s state, an nnx
    ``Optimizer.opt_state``). Before the first update the averages are zeros,
    as in Keras.
    """
    found = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, SGDState))
             if isinstance(s, SGDState)]
    if len(found) != 1:
        raise ValueError(f"`state` must hold exactly one SGDState. Received: a state holding {len(found)}")
    if found[0].averages is None:
        raise ValueError("`ema_params` needs the state of an `sgd(..., use_ema=True)`. Received: a state "
                         "without averages (use_ema=False)")
    return _pure(found[0].averages)


class _Layout:
    """Where each of a built polyak.SGD's variables goes in an SGDState, and back.

    The roles come from the optimizer's ``state_roles``; each role's list is aligned
    with the weights (None where a weight has no such variable).
    """

    def __init__(self, opt, leaves, treedef):
        self.treedef = treedef
        self.paths = _paths(treedef.unflatten(leaves))
        position = {id(v): k for k, v in enumerate(opt.variables)}
        roles = opt.state_roles
        self.iteration = position[id(roles.iteration)]
        self.skipped = None if roles.skipped is None else position[id(roles.skipped)]
        self.fields = {}
        for field, role in _PER_WEIGHT:
            variables = roles.role(role)
            if any(v is not None for v in variables):
                self.fields[field] = [None if v is None else position[id(v)] for v in variables]

    def state(self, values):
        """The SGDState holding ``values`` (a list in ``opt.variables``' order)."""
        per_weight = {field: self.treedef.unflatten([None if k is None else values[k] for k in slots])
                      for field, slots in self.fields.items()}
        skipped = None if self.skipped is None else values[self.skipped]
        return SGDState(iteration=values[self.iteration], skipped=skipped, **per_weight)

    def values(self, state, initial):
        """``initial`` (``opt.variables``' values) with those ``state`` holds put in."""
        values = list(initial)
        kept = {"iteration", *self.fields, *(["skipped"] if self.skipped is not None else [])}
        for field in SGDState._fields:
            given, wanted = getattr(state, field), field in kept
            if (given is None) == wanted:
                raise ValueError(f"`state.{field}` must be {'an array' if wanted else 'None'} for this "
                                 f"configuration of `sgd`. Received: {type(given).__name__}")
        values[self.iteration] = state.iteration
        if self.skipped is not None:
            values[self.skipped] = state.skipped
        for field, slots in self.fields.items():
            for k, value in zip(slots, self._leaves(getattr(state, field), f"state.{field}")):
                if k is not None:
                    values[k] = value
        return values

    def _leaves(self, tree, what):
        try:
            return self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError):
            given = _paths(tree)
            raise ValueError(f"`{what}` must have the structure of `params`. Received: missing "
                             f"{[p for p in self.paths if p not in given]}, unexpected "
                             f"{[p for p in given if p not in self.paths]}") from None


def _paths(tree, is_leaf=None):
    """Each leaf's key path, as polyak names pytree leaves (``"dense/bias"``)."""
    return [jax.tree_util.keystr(path, simple=True, separator="/")
            for path, _ in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]]


def _mask_leaves(mask, params):
    """The decay mask as one bool per leaf of ``params`` (all True without a mask)."""
    treedef = jax.tree_util.tree_structure(params)
    if mask is None:
        return [True] * treedef.num_leaves
    if callable(mask):
        mask = mask(params)
    with_none = jax.tree_util.tree_structure(params, is_leaf=_is_none)  # None leaves: anything in the mask
    try:
        flags = with_none.flatten_up_to(mask)
    except (ValueError, TypeError):
        given = _paths(mask)
        expected = _paths(params)
        raise ValueError(f"`weight_decay_mask` must have the structure of `params`. Received: missing "
                         f"{[p for p in expected if p not in given]}, unexpected "
                         f"{[p for p in given if p not in expected]}, mask structure "
                         f"{jax.tree_util.tree_structure(mask)}") from None
    leaves = jax.tree_util.tree_leaves(params, is_leaf=_is_none)
    out = []
    for leaf, flag, path in zip(leaves, flags, _paths(params, _is_none)):
        if leaf is None:
            continue
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"`weight_decay_mask` must hold a Python bool for each weight. Received: "
                            f"{type(flag).__name__} for {path!r}")
        out.append(bool(flag))
    return out


def _step_function(schedule):
    """``schedule``, after checking that it can be called with the step count."""
    try:
        inspect.signature(schedule).bind(0)
    except TypeError:
        raise TypeError("`learning_rate` must be a float, a polyak schedule, or a function of the step count "
                        "(an optax schedule); a zero-argument callable (Keras's) is not traced by a pure step. "
                        f"Received: learning_rate={schedule!r}") from None
    except ValueError:  # no signature to read (a builtin): trust it
        pass
    return schedule


def _is_none(x):
    return x is None


def _pure(tree):
    """``tree`` with ``flax.nnx.Variable`` leaves unwrapped and NumPy leaves as JAX arrays."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None:
        tree = nnx.as_pure(tree)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else x,
                                  tree)
