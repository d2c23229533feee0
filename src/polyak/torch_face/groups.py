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

from polyak import arguments, options, rates, validation
from polyak.core.momentum import MomentumRule
from polyak.core.state import GroupPlan

#: each group's own options (the table's per-group rows), by this face's names
HYPERPARAMETERS = tuple(o.name_on(options.TORCH) for o in options.PER_GROUP)
#: what a group may hold when given: its own hyperparameters, and the keys torch itself writes
KNOWN_KEYS = frozenset(("params", "param_names", "initial_lr", *HYPERPARAMETERS))


def check_keys(group, index):
    unknown = sorted(set(group) - KNOWN_KEYS)
    if unknown:
        hints = arguments.hints(options.TORCH, unknown, ("params", *HYPERPARAMETERS))
        raise ValueError(" ".join([
            f"Param group {index} has unknown key(s) {unknown}: a group takes `params` and "
            f"{', '.join(f'`{k}`' for k in HYPERPARAMETERS)}. Received: keys {sorted(group)}.", *hints]))


def name(index, key):
    """How an error names a group's option: ``param_groups[1]['lr']``."""
    return f"param_groups[{index}]['{key}']"


def checked(group, index, schedule=None):
    """``(rate, momentum, nesterov, weight_decay)`` of ``group``, by the options table's checks:
    ``rate`` its schedule when it has one, else its ``lr`` as a float (a one-element tensor is
    read); ``weight_decay`` None when the group does not decay."""
    values = {key: group[key] for key in HYPERPARAMETERS}
    lr = values["lr"]
    if schedule is not None:
        values["lr"] = schedule
    elif isinstance(lr, torch.Tensor) and lr.numel() == 1:
        values["lr"] = lr.item()
    elif rates.varies(lr):  # set into the group after it was added: the face would not report it
        validation.fail(name(index, "lr"), lr, "a float >= 0 (a schedule or callable rate is given to the "
                        "constructor or to `add_param_group`)", TypeError)
    out = options.checked(options.PER_GROUP, values, options.TORCH, lambda key: name(index, key))
    return out["learning_rate"], out["momentum"], out["nesterov"], (out["weight_decay"] or None)


def rate_function(rate, device, index):
    """``learning_rate(iteration, stored)`` for group ``index``'s own rate (float32, as Keras
    stores it); a schedule's or callable's value is checked at the step."""
    if rates.varies(rate):
        return rates.step_function(rate, name(index, "lr"))
    value = torch.full((), rate, dtype=torch.float32, device=device)  # no copy from the host
    return lambda iteration, stored: value


def descent(values, sizes, has_slots, device, decay_mask):
    """The ``StepPlan`` fields for groups with checked ``values`` and ``sizes`` weights each;
    ``decay_mask``: per weight, whether decay may apply to it at all (names not excluded).

    Returns ``(fields, stored_rate)``: ``stored_rate`` is the float to write into the
    optimizer's stored rate before the step (None when the plan does not read it)."""
    group_of = tuple(k for k, size in enumerate(sizes) for _ in range(size))
    kinds = {("schedule", id(r)) if rates.varies(r) else ("float", r) for r, _, _, _ in values}
    shared = {(m, n) for _, m, n, _ in values}
    decays = {d for _, _, _, d in values if d is not None}
    if len(kinds) == 1 and len(shared) == 1 and len(decays) <= 1 and not (has_slots and values[0][1] == 0):
        rate, momentum, nesterov, _ = values[0]
        fields = dict(rule=MomentumRule(momentum, nesterov), weight_decay=next(iter(decays), None),
                      decay_mask=tuple(values[k][3] is not None and decays for k, decays in zip(group_of, decay_mask)))
        if rates.varies(rate):
            fields["learning_rate"] = rate_function(rate, device, 0)
            return fields, None
        return fields, rate
    groups = tuple(GroupPlan(learning_rate=rate_function(r, device, k), rule=MomentumRule(m, n), weight_decay=d)
                   for k, (r, m, n, d) in enumerate(values))
    return dict(groups=groups, group_of=group_of, decay_mask=tuple(decay_mask)), None


def current_rate(rate, iteration):
    """What ``group["lr"]`` reports for a schedule or callable: its value now, as a float."""
    value = rates.value_at(rate, iteration)
    return float(value.item() if hasattr(value, "item") else value)
