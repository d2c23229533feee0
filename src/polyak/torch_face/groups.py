"""Param groups: torch's way of giving weights their own hyperparameters, read as polyak's plan.

A group holds ``lr``, ``momentum``, ``nesterov`` and ``weight_decay`` (``None`` or ``0.0``: the
group is excluded from decay, as ``exclude_from_weight_decay`` does). They are read at every
``step``, so torch's schedulers (which write ``group["lr"]``, and some ``group["momentum"]``)
drive them. What they become in polyak's step (``StepPlan`` fields):

* groups that agree on rate, momentum and Nesterov, and whose non-zero decays are one value,
  are one plan: ``rule``, ``weight_decay``, ``decay_mask`` (and the rate: the stored rate, or
  the group's schedule), which the fused tiers can run;
* otherwise ``groups`` (a :class:`polyak.core.state.GroupPlan` each) and ``group_of``: the
  descent runs per group, on the reference tier.
"""

from __future__ import annotations

import torch

from polyak import arguments, validation
from polyak.core.momentum import MomentumRule
from polyak.core.state import GroupPlan
from polyak.schedules import LearningRateSchedule

HYPERPARAMETERS = ("lr", "momentum", "nesterov", "weight_decay")
#: what a group may hold when given: its own hyperparameters, and the keys torch itself writes
KNOWN_KEYS = frozenset(("params", "param_names", "initial_lr", *HYPERPARAMETERS))


def is_schedule(lr) -> bool:
    """A polyak schedule or a zero-argument callable (Keras's two non-float rates)."""
    return isinstance(lr, LearningRateSchedule) or (callable(lr) and not isinstance(lr, torch.Tensor))


def check_keys(group, index):
    unknown = sorted(set(group) - KNOWN_KEYS)
    if unknown:
        hints = arguments.hints("polyak.torch.SGD", unknown, ("params", *HYPERPARAMETERS))
        raise ValueError(" ".join([
            f"Param group {index} has unknown key(s) {unknown}: a group takes `params` and "
            f"{', '.join(f'`{k}`' for k in HYPERPARAMETERS)}. Received: keys {sorted(group)}.", *hints]))


def _name(index, key):
    return f"param_groups[{index}]['{key}']"


def checked_rate(index, lr):
    """``lr`` as a finite float >= 0 (a 0-d tensor is read); the error names the group."""
    if isinstance(lr, torch.Tensor) and lr.numel() == 1:
        lr = lr.item()
    if not validation.is_real(lr):
        validation.fail(_name(index, "lr"), lr, "a float >= 0, a polyak schedule or a callable", TypeError)
    return validation.real(_name(index, "lr"), lr, low=0)


def checked_momentum(index, momentum):
    name = _name(index, "momentum")
    if not validation.is_real(momentum):
        validation.fail(name, momentum, "a float between [0, 1]", TypeError)
    value = float(momentum)
    if not 0 <= value <= 1:  # NaN included
        validation.fail(name, momentum, "a float between [0, 1]")
    return value


def checked(group, index, schedule=None):
    """``(rate, momentum, nesterov, weight_decay)`` of ``group``: ``rate`` its schedule when it
    has one, else its ``lr`` as a float; ``weight_decay`` None when the group does not decay."""
    rate = schedule if schedule is not None else checked_rate(index, group["lr"])
    momentum = checked_momentum(index, group["momentum"])
    nesterov = validation.boolean(_name(index, "nesterov"), group["nesterov"])
    decay = validation.real(_name(index, "weight_decay"), group["weight_decay"], low=0, optional=True)
    return rate, momentum, nesterov, (decay or None)


def rate_function(rate, device):
    """``learning_rate(iteration, stored)`` for a group's own rate (float32, as Keras stores it)."""
    if isinstance(rate, LearningRateSchedule):
        return lambda iteration, stored: rate(iteration)
    if callable(rate):
        return lambda iteration, stored: rate()
    value = torch.full((), rate, dtype=torch.float32, device=device)  # no copy from the host
    return lambda iteration, stored: value


def descent(values, sizes, has_slots, device, decay_mask):
    """The ``StepPlan`` fields for groups with checked ``values`` and ``sizes`` weights each;
    ``decay_mask``: per weight, whether decay may apply to it at all (names not excluded).

    Returns ``(fields, stored_rate)``: ``stored_rate`` is the float to write into the
    optimizer's stored rate before the step (None when the plan does not read it)."""
    group_of = tuple(k for k, size in enumerate(sizes) for _ in range(size))
    rates = {("schedule", id(r)) if is_schedule(r) else ("float", r) for r, _, _, _ in values}
    shared = {(m, n) for _, m, n, _ in values}
    decays = {d for _, _, _, d in values if d is not None}
    if len(rates) == 1 and len(shared) == 1 and len(decays) <= 1 and not (has_slots and values[0][1] == 0):
        rate, momentum, nesterov, _ = values[0]
        fields = dict(rule=MomentumRule(momentum, nesterov), weight_decay=next(iter(decays), None),
                      decay_mask=tuple(values[k][3] is not None and decays for k, decays in zip(group_of, decay_mask)))
        if is_schedule(rate):
            fields["learning_rate"] = rate_function(rate, device)
            return fields, None
        return fields, rate
    groups = tuple(GroupPlan(learning_rate=rate_function(r, device), rule=MomentumRule(m, n), weight_decay=d)
                   for r, m, n, d in values)
    return dict(groups=groups, group_of=group_of, decay_mask=tuple(decay_mask)), None


def current_rate(rate, iteration):
    """What ``group["lr"]`` reports for a schedule or callable: its value now, as a float."""
    value = rate(iteration) if isinstance(rate, LearningRateSchedule) else rate()
    return float(value.item() if hasattr(value, "item") else value)
