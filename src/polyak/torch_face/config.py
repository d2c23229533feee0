"""What ``polyak.save`` records of a ``polyak.torch.SGD``: its class and its real options.

Keras's serialized form (``{"module", "class_name", "config", "registered_name"}``) with
module ``polyak.torch``: the options over all groups, the constructor's defaults for new
groups (``lr``, ``momentum``, ``nesterov``, ``weight_decay``), and each param group's own
options with its parameter count (and names, when it has them). The groups hold the
parameters themselves, which a file does not, so ``polyak.load`` restores this state only
into a ``polyak.torch.SGD`` made on the parameters (``polyak.saving.checkpoint``).
"""

from __future__ import annotations

from typing import Any

from polyak import rates
from polyak.saving import checkpoint
from polyak.torch_face import groups as groups_mod

MODULE = checkpoint.TORCH_FACE


def checkpoint_config(face) -> dict[str, Any]:
    param_groups = []
    for k, group in enumerate(face.param_groups):
        rate, momentum, nesterov, decay = groups_mod.checked(group, k, face._schedules.get(k))
        entry = dict(lr=rates.config(rate), momentum=momentum, nesterov=nesterov, weight_decay=decay,
                     params=len(group["params"]))
        if "param_names" in group:
            entry["param_names"] = list(group["param_names"])
        param_groups.append(entry)
    defaults = dict(face.defaults, lr=rates.config(face.defaults["lr"]))
    config = dict(defaults, **face._config, param_groups=param_groups)
    return {"module": MODULE, "class_name": type(face).__name__, "config": config, "registered_name": None}
