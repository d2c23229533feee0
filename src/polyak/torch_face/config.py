"""A ``polyak.torch.SGD``'s options as it shows them (its repr) and as ``polyak.save`` records
them: its class and its real options.

Keras's serialized form (``{"module", "class_name", "config", "registered_name"}``) with
module ``polyak.torch``: the options over all groups, the constructor's defaults for new
groups (``lr``, ``momentum``, ``nesterov``, ``weight_decay``), and each param group's own
options with its parameter count (and names, when it has them) and ``other_keys``: what else
the group holds that is a number, a string or None (the keys torch's schedulers write:
``initial_lr``, OneCycleLR's ``max_lr``, ...), as torch's ``state_dict`` keeps them. The groups hold the
parameters themselves, which a file does not, so ``polyak.load`` restores this state only
into a ``polyak.torch.SGD`` made on the parameters (``polyak.saving.checkpoint``).
"""

from __future__ import annotations

from typing import Any

from polyak import rates, reprs, schedules
from polyak.saving import checkpoint
from polyak.torch_face import groups as groups_mod

MODULE = checkpoint.TORCH_FACE


def _rate(rate):
    """A float or a schedule as a config holds it; another callable by its repr (this config is
    a record, never loaded: a lambda or a ``functools.partial`` saves as well as a float)."""
    if callable(rate) and not isinstance(rate, schedules.LearningRateSchedule):
        return {"class_name": "__callable__", "config": repr(rate)}
    return rates.config(rate)


#: the keys a group's record holds on their own (``other_keys`` holds the rest)
OWN_KEYS = frozenset(("params", "param_names", *groups_mod.HYPERPARAMETERS))


def other_keys(group) -> dict[str, Any]:
    """The keys of ``group`` beyond its options and parameters whose values a JSON file holds
    exactly: numbers, strings, None."""
    exact = (bool, int, float, str, type(None))
    return {key: value for key, value in group.items()
            if isinstance(key, str) and key not in OWN_KEYS and isinstance(value, exact)}


def checkpoint_config(face) -> dict[str, Any]:
    param_groups = []
    for k, group in enumerate(face.param_groups):
        rate, momentum, nesterov, decay = groups_mod.checked(group, k, face._schedules.get(k))
        entry = dict(lr=_rate(rate), momentum=momentum, nesterov=nesterov, weight_decay=decay,
                     params=len(group["params"]))
        if "param_names" in group:
            entry["param_names"] = list(group["param_names"])
        entry["other_keys"] = other_keys(group)
        param_groups.append(entry)
    defaults = dict(face.defaults, lr=_rate(face.defaults["lr"]))
    config = dict(defaults, **face._config, param_groups=param_groups)
    return {"module": MODULE, "class_name": type(face).__name__, "config": config, "registered_name": None}


def describe(face) -> str:
    """torch's format (``SGD (``, then ``Parameter Group 0`` and one ``    key: value`` line per
    option), every group listing all its options: its own and those over all groups."""
    text = f"{type(face).__name__} ("
    for i, group in enumerate(face.param_groups):
        options = dict(face._config, **{k: v for k, v in group.items() if k != "params"})
        if i in face._schedules:
            options["lr"] = f"{face._schedules[i]!r} (now {reprs.float32(group['lr'])})"
        text += f"\nParameter Group {i}\n"
        text += "".join(f"    {key}: {options[key]}\n" for key in sorted(options))
    return text + ")"
