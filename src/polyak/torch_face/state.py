"""The optimizer state in torch's format, read from and written to polyak's variables.

``optimizer.state[p]`` is ``{"step": ..., "momentum": ..., "average": ...,
"gradient_accumulator": ..., "master": ..., "skipped_steps": ...}`` (each role only where
the configuration keeps it, from ``state_roles``): the variables' current tensors, read at
access time, since the fused tier moves the state into flat buffers on its first step.
``step`` is the raw count of steps (all parameters share it, as Keras's iteration is one
counter); ``skipped_steps`` (with ``skip_nonfinite``) likewise.

``state_dict()`` holds copies of those tensors under each parameter's index, and the param
groups with their hyperparameters, as torch's optimizers write them.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from polyak.optimizers.state_roles import ACCUMULATOR, AVERAGE, MASTER

STEP, SKIPPED, MOMENTUM = "step", "skipped_steps", "momentum"


def entries(internal, index) -> dict:
    """Parameter ``index``'s state: the live tensors of its optimizer variables, by role."""
    roles = internal.state_roles
    out = {STEP: roles.iteration.value}
    if roles.skipped is not None:
        out[SKIPPED] = roles.skipped.value
    for role, variables in roles.per_weight:
        if variables[index] is not None:
            out[role] = variables[index].value
    return out


def expected_keys(face, index) -> set:
    """The keys parameter ``index`` must hold in a state_dict for this configuration
    (``momentum`` aside: it may be absent, and is then zero)."""
    config, internal = face._config, face._internal
    keys = {STEP}
    if config["skip_nonfinite"]:
        keys.add(SKIPPED)
    if config["use_ema"]:
        keys.add(AVERAGE)
    if config["gradient_accumulation_steps"]:
        keys.add(ACCUMULATOR)
    if internal.state_roles.role(MASTER) and internal.state_roles.role(MASTER)[index] is not None:
        keys.add(MASTER)
    return keys


def write(internal, index, values: dict) -> None:
    """Assign parameter ``index``'s variables from ``values`` (checked beforehand); a
    velocity absent from ``values`` restarts at zero."""
    roles = internal.state_roles
    if STEP in values:
        roles.iteration.assign(_as_int(values[STEP]))
    if SKIPPED in values and roles.skipped is not None:
        roles.skipped.assign(_as_int(values[SKIPPED]))
    for role, variables in roles.per_weight:
        variable = variables[index]
        if variable is None:
            continue
        if role in values:
            variable.assign(values[role])
        elif role == MOMENTUM:
            variable.assign(variable.value * 0)


def _as_int(value):
    return int(value.item() if hasattr(value, "item") else value)


class LiveState(MutableMapping):
    """``optimizer.state``: each parameter's entries read from polyak's variables when asked.

    Empty until the first step (or a loaded state), as torch's is; reading a parameter without
    state gives ``{}``, as torch's ``defaultdict`` does (without adding it). Assigning
    ``state[p] = {...}`` (Lightning does, after moving tensors to the device) writes the
    values into the variables."""

    def __init__(self, face):
        self._face = face

    def _index(self, param):
        face = self._face
        if not face._has_state:
            return None
        return face._param_index().get(id(param))

    def __getitem__(self, param):
        index = self._index(param)
        if index is None:
            return {}
        return entries(self._face._internal, index)

    def __setitem__(self, param, values):
        index = self._index(param)
        if index is None:
            raise KeyError(f"Not a parameter with state in this optimizer: {param!r}")
        current = entries(self._face._internal, index)
        unknown = sorted(set(values) - set(current))
        if unknown:
            raise ValueError(f"Unknown state key(s) {unknown} for parameter {self._face._param_name(index)!r}. "
                             f"Received: keys {sorted(values)}; it holds {sorted(current)}")
        write(self._face._internal, index, {k: v for k, v in values.items() if v is not current[k]})

    def __delitem__(self, param):
        raise TypeError("The state of polyak.torch.SGD is its optimizer variables: it cannot be deleted per "
                        "parameter. Load a state_dict, or create a new optimizer.")

    def __iter__(self):
        if not self._face._has_state:
            return iter(())
        return iter(self._face._params())

    def __len__(self):
        return len(self._face._params()) if self._face._has_state else 0

    def __contains__(self, param):
        return self._index(param) is not None

    def __repr__(self):
        return f"LiveState({dict(self)!r})"
