"""``polyak.torch.SGD``: polyak's SGD as a ``torch.optim.Optimizer``.

This module only translates torch's conventions (param groups, ``step``, ``state``,
``state_dict``) onto one private :class:`polyak.SGD` built on every parameter: its ``apply``
runs the step, on the same tiers (the CPU fused tier for float32 CPU tensors in one
group, or groups that agree), with Keras's numbers.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Iterable, TypeVar, cast

import torch
from torch.optim.optimizer import ParamsT

from polyak import arguments, options, rates
from polyak.annotations import LearningRateLike, NoOtherKeyword
from polyak.optimizers import parameters as params_mod
from polyak.optimizers.sgd import SGD as KerasSGD
from polyak.optimizers.structure import NamedWeights
from polyak.torch_face import config as config_mod
from polyak.torch_face import groups as groups_mod
from polyak.torch_face import resume as resume_mod
from polyak.torch_face import state as state_mod


STEP_RUNS_EAGERLY = ("polyak.torch.SGD.step runs eagerly, outside the compiled graph: it runs polyak's own "
                     "tiers (the fused kernel, not a traced copy of it), with the same numbers")
_Loss = TypeVar("_Loss")
_Function = TypeVar("_Function", bound=Callable[..., Any])


def _runs_eagerly(function: _Function) -> _Function:
    """``function`` as a graph break under ``torch.compile``, whose logged reason is
    ``STEP_RUNS_EAGERLY`` (and whose signature a type checker still sees)."""
    return cast(_Function, torch.compiler.disable(function, reason=STEP_RUNS_EAGERLY))


class _GroupedSGD(KerasSGD):
    """polyak's SGD whose descent hyperparameters (rule, rates, decay) are the face's param
    groups', set before each step as ``StepPlan`` fields in ``descent``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.descent = {}

    def _plan(self):
        return dataclasses.replace(super()._plan(), **self.descent)

    def __getstate__(self):
        return dict(super().__getstate__(), descent={})  # rebuilt from the groups at every step


_NO_DESCENT = (None, None, None)
#: a non-zero momentum that makes the private optimizer keep a velocity per weight; the rule and
#: rates it runs are always the groups' (``descent``), and checkpoints record the groups' options
_KEEPS_VELOCITY = 0.9


class SGD(torch.optim.Optimizer):
    """Keras 3's SGD (polyak's) as a ``torch.optim.Optimizer``.

    With velocity ``v`` (zero at the start) and decoupled decay applied first::

        w <- w - w * weight_decay * lr
        v <- momentum * v - lr * g
        w <- w + v                          (nesterov=False)
        w <- w + momentum * v - lr * g      (nesterov=True)

    The velocity carries the rate it was taken with (Keras's convention; torch's SGD keeps
    ``momentum * b + g`` and scales it later), so a new rate acts through new gradients only.

    Args:
        params: tensors, ``(name, tensor)`` pairs (``model.named_parameters()``: the names
            name the weights' variables and checkpoint keys), or param-group dicts with
            their own ``lr``, ``momentum``, ``nesterov`` and ``weight_decay``.
        lr: a float, a polyak ``LearningRateSchedule`` or a zero-argument callable. A float is
            read from ``group["lr"]`` at every step, so ``torch.optim.lr_scheduler`` drives it;
            with a schedule or callable, ``group["lr"]`` reports its current value.
        momentum, nesterov: as :class:`polyak.SGD`'s.
        weight_decay: decoupled, ``None`` or 0 for none (per group: a group with 0 or None is
            excluded from decay).
        clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, ema_overwrite_frequency,
        loss_scale_factor, gradient_accumulation_steps, master_weights, skip_nonfinite: as
            :class:`polyak.SGD`'s, over all groups: global clipping and the iteration count
            span every group.

    Groups that differ in rate, momentum, Nesterov or non-zero decay run the reference tier
    (the same numbers, without the fused kernel).

    Another keyword raises :class:`polyak.SGD`'s ``ValueError`` ("Argument(s) not recognized"),
    with the name it resembles (``learning_rate``: this face's ``lr``).

    Example::

        >>> import torch
        >>> from polyak.torch import SGD
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> opt = SGD([w], lr=0.1, momentum=0.9)
        >>> w.grad = torch.ones(2)
        >>> opt.step()
        >>> w.detach()
        tensor([0.9000, 1.9000])
        >>> opt.state[w]["momentum"]
        tensor([-0.1000, -0.1000])
    """

    def __init__(self, params: ParamsT, lr: LearningRateLike = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float | None = None, clipnorm: float | None = None, clipvalue: float | None = None,
                 global_clipnorm: float | None = None, use_ema: bool = False, ema_momentum: float = 0.99,
                 ema_overwrite_frequency: int | None = None, loss_scale_factor: float | None = None,
                 gradient_accumulation_steps: int | None = None, master_weights: bool = False,
                 skip_nonfinite: bool = False, **kwargs: NoOtherKeyword) -> None:
        if kwargs:
            raise arguments.not_recognized(options.TORCH, kwargs, ["params", *options.names(options.TORCH)])
        given = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, clipnorm=clipnorm,
                     clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
                     ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
                     loss_scale_factor=loss_scale_factor, gradient_accumulation_steps=gradient_accumulation_steps,
                     master_weights=master_weights, skip_nonfinite=skip_nonfinite)
        options.check_one_clipping(given)
        values = options.checked(options.of_face(options.TORCH), given, options.TORCH)  # all of them, now
        #: the options over all groups (each group holds its own of the others)
        self._config = {o.name: values[o.name] for o in options.of_face(options.TORCH) if not o.per_group}
        self._schedules = {}  # group index -> its schedule or callable rate
        self._excluded = ((), ())  # exclude_from_weight_decay's var_list and var_names
        self._internal = None
        self._has_state = False
        #: ``(groups' key, per-weight settings, (plan fields, stored rate))`` of the last step
        self._descent_cache = _NO_DESCENT
        super().__init__(params, {key: given[key] for key in groups_mod.HYPERPARAMETERS})
        self.state = state_mod.LiveState(self)
        self._step_lock = threading.RLock()  # serialises ``step`` across threads

    # --- groups -------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's checks, then the group's hyperparameters'); a group added after
        steps starts with zero state while the others keep theirs."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        index = len(self.param_groups)
        groups_mod.check_keys(param_group, index)
        if isinstance(param_group.get("params"), (list, tuple)):
            first = len(self._params())
            for i, p in enumerate(param_group["params"]):
                params_mod.check_not_keras(first + i, p[-1] if isinstance(p, tuple) else p)
        group = dict(param_group)
        for key, default in self.defaults.items():
            group.setdefault(key, default)
        schedule = group["lr"] if rates.varies(group["lr"]) else None
        groups_mod.checked(group, index, schedule)
        if schedule is not None:
            group["lr"] = groups_mod.current_rate(schedule, self._iteration())
        super().add_param_group(group)
        if schedule is not None:
            self._schedules[index] = schedule
        if self._internal is not None:
            self._prepare()

    def exclude_from_weight_decay(self, var_list: Iterable[torch.Tensor] | None = None,
                                  var_names: Iterable[str] | None = None) -> None:
        """No decay for the tensors in ``var_list`` and those whose name (from
        ``named_parameters``) contains a string of ``var_names`` (a regex search), as
        :meth:`polyak.SGD.exclude_from_weight_decay`; call it before the first step."""
        if self._internal is not None:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before the first step.")
        options.exclusion_pattern(var_names)  # Keras's checks of the names
        self._excluded = (tuple(var_list or ()), tuple(var_names or ()))

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def _param_index(self):
        return {id(p): i for i, p in enumerate(self._params())}

    def _names(self):
        if "param_names" not in self.param_groups[0]:
            return None
        return [name for group in self.param_groups for name in group["param_names"]]

    def _param_name(self, index):
        names = self._names()
        return names[index] if names else f"params[{index}]"

    def _iteration(self):
        return 0 if self._internal is None else self._internal.state_roles.iteration.host

    # --- the polyak optimizer behind the face ----------------------------------------
    def _build(self, with_slots):
        """The private polyak optimizer on every parameter (its state carried over, by role,
        from the previous one when groups were added or a velocity is now needed)."""
        params, names = self._params(), self._names()
        internal = _GroupedSGD(learning_rate=0.0, momentum=_KEEPS_VELOCITY if with_slots else 0.0, name="sgd",
                               **self._config)
        internal.exclude_from_weight_decay(var_list=self._excluded[0], var_names=self._excluded[1])
        internal.build(NamedWeights(params, names) if names else params)
        previous = self._internal
        if previous is not None:
            old, new = previous.state_roles, internal.state_roles
            new.iteration.assign(old.iteration.value, host=old.iteration.known_host)
            if old.skipped is not None:
                new.skipped.assign(old.skipped.value)
            for role, variables in old.per_weight:
                for before, after in zip(variables, new.role(role)):
                    if before is not None and after is not None:
                        after.assign(before.value)
        self._internal = internal

    def _checked_groups(self):
        return [groups_mod.checked(g, k, self._schedules.get(k)) for k, g in enumerate(self.param_groups)]

    def _prepare(self, values=None):
        """Check every group, then set the polyak optimizer's plan from them."""
        values = self._checked_groups() if values is None else values
        needs_slots = any(momentum != 0 for _, momentum, _, _ in values)
        internal = self._internal
        if internal is None or len(internal._trainable_variables) != len(self._params()) or (
                needs_slots and not internal.momentums):
            self._build(needs_slots or (internal is not None and bool(internal.momentums)))
            internal = self._internal
        sizes = tuple(len(g["params"]) for g in self.param_groups)
        per_weight = internal._per_weight()
        key = (tuple(values), sizes, bool(internal.momentums), internal._backend.device)
        cached_key, cached_per_weight, cached = self._descent_cache
        if key == cached_key and per_weight is cached_per_weight:  # the same groups as the last step
            fields, stored = cached
        else:
            fields, stored = groups_mod.descent(values, sizes, bool(internal.momentums), internal._backend.device,
                                                per_weight.decay_mask)
            self._descent_cache = (key, per_weight, (fields, stored))
        if stored is not None:
            internal.learning_rate = stored
        internal.descent = fields
        return internal

    # --- torch's Optimizer --------------------------------------------------------
    @_runs_eagerly
    def step(self, closure: Callable[[], _Loss] | None = None) -> _Loss | None:
        """One polyak step with the gradients in ``p.grad`` (parameters without one are left
        alone); ``closure`` is called first, under ``enable_grad``, and its loss returned.

        Under ``torch.compile`` the step is a graph break: it runs eagerly, on polyak's tiers
        (the fused kernel, not a traced copy of it), and gives the same numbers. Calls from
        several threads are serialised, each with its closure: each runs whole, in turn."""
        with self._step_lock:
            return self._locked_step(closure)

    def _locked_step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        internal = self._prepare()
        params, grads = [], []
        for p in self._params():
            g = p.grad
            if g is not None:
                params.append(p)
                grads.append(g)
        if self._initialises_state(params):
            self._has_state = True
        elif params:
            built = internal._trainable_variables
            internal.apply(grads, built if len(params) == len(built) else params)
            self._has_state = True
        for index, schedule in self._schedules.items():
            self.param_groups[index]["lr"] = groups_mod.current_rate(schedule, self._iteration())
        return loss

    def _initialises_state(self, params):
        """Whether this step is torch's request to create the state (DCP's and FSDP's
        ``_init_optim_state``): a first step, at rate 0 in every group, on gradients that are
        all zero. It creates the state and changes nothing else, not even the iteration count
        (a step would: Keras's counter, its first EMA average, an accumulation's phase)."""
        return (not self._has_state and bool(params)
                and all(float(group["lr"]) == 0 for group in self.param_groups)
                and not any(bool(p.grad.any()) for p in params))

    @property
    def _last_tier(self):
        """The tier that ran the last step (``"cpu_fused"``, ``"reference"``, ...)."""
        return None if self._internal is None else self._internal._last_tier

    # --- state_dict ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's format: ``{"state": {index: {...}}, "param_groups": [...]}``, the state
        tensors copied (a fused tier's state is a view into a flat buffer)."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        index = 0
        param_groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            param_groups.append(packed)
        state = {}
        if self._has_state:
            for i in range(index):
                state[i] = {k: v.detach().clone() for k, v in state_mod.entries(self._internal, i).items()}
        result = {"state": state, "param_groups": param_groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            returned = hook(self, result)
            result = returned if returned is not None else result
        return result

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what ``state_dict`` wrote (after checking it matches these parameters, groups and
        configuration: nothing changes otherwise); the trajectory continues where it was."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            returned = hook(self, state_dict)
            state_dict = returned if returned is not None else state_dict
        saved_groups, saved_state = self._checked_state_dict(state_dict)
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k not in ("params", "param_names")})
        needs_slots = any(MOMENTUM_KEY in entry for entry in saved_state.values())
        if needs_slots and not self._internal.momentums:
            self._build(True)
        self._prepare()
        for i, entry in saved_state.items():
            state_mod.write(self._internal, i, entry)
        if saved_state:
            self._has_state = True
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _checked_state_dict(self, state_dict):
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("`state_dict` must be what `state_dict()` returns: a dict with 'state' and "
                             f"'param_groups'. Received: {type(state_dict).__name__}"
                             f"{' with keys ' + str(sorted(state_dict)) if isinstance(state_dict, dict) else ''}")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"The loaded state dict has {len(saved_groups)} parameter groups; this optimizer has "
                             f"{len(self.param_groups)}: it comes from another model or optimizer.")
        for k, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"Param group {k} of the loaded state dict has {len(saved['params'])} parameters; "
                                 f"this optimizer's has {len(group['params'])}: it comes from another model.")
            if "param_names" in saved and "param_names" in group and saved["param_names"] != group["param_names"]:
                raise ValueError(f"Param group {k} of the loaded state dict names its parameters "
                                 f"{saved['param_names']}; this optimizer's are {group['param_names']}.")
            merged = dict(group, **{key: v for key, v in saved.items() if key != "params"})
            groups_mod.checked(merged, k, self._schedules.get(k))
        self._prepare()
        params = self._params()
        order = [i for saved in saved_groups for i in saved["params"]]
        position = {saved_index: i for i, saved_index in enumerate(order)}
        saved_state = {}
        for key, entry in dict(state_dict["state"]).items():
            if key not in position:
                raise ValueError(f"The loaded state dict has state for parameter {key!r}, which none of its "
                                 "param groups holds.")
            i = position[key]
            expected = state_mod.expected_keys(self, i)
            given = set(entry)
            if not expected <= given or not given <= expected | {MOMENTUM_KEY}:
                raise ValueError(f"The loaded state of parameter {self._param_name(i)!r} holds {sorted(given)}; "
                                 f"this optimizer keeps {sorted(expected | {MOMENTUM_KEY})} "
                                 "(momentum optional): it comes from another configuration.")
            for role, value in entry.items():
                if role in (state_mod.STEP, state_mod.SKIPPED):
                    continue
                shape = tuple(value.shape) if hasattr(value, "shape") else None
                if shape != tuple(params[i].shape):
                    raise ValueError(f"The loaded {role!r} of parameter {self._param_name(i)!r} has shape {shape}; "
                                     f"the parameter has shape {tuple(params[i].shape)}: it comes from another "
                                     "model.")
            saved_state[i] = entry
        return saved_groups, saved_state

    # --- polyak.save / polyak.load -----------------------------------------------------
    def _checkpoint_optimizer(self):
        """The polyak optimizer whose variables ``polyak.save`` writes and ``polyak.load`` reads:
        the one behind this face, built on every parameter (its keys are the parameters' names
        when they were given as ``named_parameters``)."""
        return self._prepare()

    def _checkpoint_config(self):
        """What ``polyak.save`` records: this class and its real options, per group."""
        return config_mod.checkpoint_config(self)

    def _checkpoint_plan(self, config, path):
        """``polyak.load``'s check of the groups' recorded options: ``(mismatched, updates)``."""
        return resume_mod.plan(self, config, path)

    def _checkpoint_loaded(self, updates, excluded):
        """After ``polyak.load``: the groups' current options and the file's exclusions."""
        resume_mod.restore(self, updates, excluded)

    def __repr__(self) -> str:
        """torch's format (``SGD (``, then ``Parameter Group 0`` and one ``    key: value`` line per
        option), every group listing all its options: its own and those over all groups."""
        return config_mod.describe(self)

    # --- copies -------------------------------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__, _descent_cache=_NO_DESCENT)  # made again from the groups
        del state["_step_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._step_lock = threading.RLock()
        self._patch_step_function()


MOMENTUM_KEY = state_mod.MOMENTUM
