"""Every option of polyak's SGD, in one table, for every face.

A row names an option as Keras does, gives each face's name for it (``lr`` on
``polyak.torch.SGD``), its default, its check, and whether a torch param group may hold its
own value. Each face checks its arguments with :func:`checked` (in that face's names, so the
error names what the caller typed), its unknown-keyword hints list :func:`names`, and
``get_config`` and the step's plan copy the rows they read; tests hold each face's signature
and docstring to the table. Checking never builds an optimizer.

``check(name, value)`` returns the value to keep (a float for a number) and raises, naming
``name`` and the value received: ``TypeError`` for a value of the wrong kind, ``ValueError``
for one out of range, in Keras's words where Keras has them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from polyak import rates, validation

KERAS, TORCH, OPTAX = "polyak.SGD", "polyak.torch.SGD", "polyak.optax.sgd"
FACES = (KERAS, TORCH, OPTAX)


@dataclass(frozen=True)
class Option:
    name: str  #: Keras's name (and polyak.SGD's)
    default: Any
    check: Callable[[str, Any], Any]  #: ``check(name, value) -> value``, raising on bad input
    per_group: bool = False  #: a torch param group may hold its own value
    rule: bool = False  #: SGD's update rule's (``momentum``, ``nesterov``), not the base Optimizer's
    keras: bool = True  #: an argument of Keras's; polyak's own appear in configs only when set
    step: bool = True  #: a field of ``StepPlan``, copied from the optimizer
    faces: tuple = FACES  #: the faces that take it
    aliases: Mapping[str, str] = field(default_factory=dict)  #: face -> its name, where not ``name``

    def name_on(self, face: str) -> str:
        return self.aliases.get(face, self.name)


def _real(**bounds):
    return lambda name, value: validation.real(name, value, **bounds)


def _integer(**bounds):
    return lambda name, value: validation.integer(name, value, **bounds)


def _momentum(name, value):
    """A float in [0, 1], refused in Keras's words ("a float between [0, 1]")."""
    requirement = "a float between [0, 1]"
    if not validation.is_real(value):
        validation.fail(name, value, requirement, TypeError)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not 0 <= number <= 1:  # NaN included
        validation.fail(name, value, requirement)
    return number


def exclusion_pattern(names: Iterable[str] | None, argument: str = "var_names",
                      each: bool = False) -> re.Pattern | None:
    """The regex that ``exclude_from_weight_decay``'s ``names`` make (None for none), after
    checking each is a string (an error names ``argument``, or with ``each`` its element)."""
    names = list(names or ())
    for i, n in enumerate(names):
        validation.string(f"{argument}[{i}]" if each else argument, n)
    return re.compile("|".join(sorted(set(names)))) if names else None


def _names_list(name, value):
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"`{name}` must be a list of strings. Received: {name}={value!r}")
    value = list(value)
    exclusion_pattern(value, name, each=True)
    return value


def _as_given(name, value):
    return value


LEARNING_RATE = Option("learning_rate", 0.01, rates.check, per_group=True, step=False, aliases={TORCH: "lr"})
#: SGD's rule
RULE = (
    Option("momentum", 0.0, _momentum, per_group=True, rule=True, step=False),
    Option("nesterov", False, validation.boolean, per_group=True, rule=True, step=False),
)
#: Keras's base arguments in Keras's config order, then polyak's own
BASE = (
    Option("weight_decay", None, _real(low=0, optional=True), per_group=True),
    Option("clipnorm", None, _real(low=0, optional=True)),
    Option("global_clipnorm", None, _real(low=0, optional=True)),
    Option("clipvalue", None, _real(low=0, optional=True)),
    Option("use_ema", False, validation.boolean),
    Option("ema_momentum", 0.99, _real(low=0, high=1)),
    Option("ema_overwrite_frequency", None, _integer(low=1, optional=True)),
    Option("loss_scale_factor", None, _real(low=0, low_open=True, optional=True)),
    Option("gradient_accumulation_steps", None, _integer(low=2, optional=True)),
    Option("master_weights", False, validation.boolean, keras=False, step=False),
    Option("skip_nonfinite", False, validation.boolean, keras=False),
)
NAME = Option("name", None, lambda name, value: validation.string(name, value, optional=True), step=False,
              faces=(KERAS,))
#: the optax face's ways of excluding weights from decay (the others have a method for it)
EXCLUSION = (
    Option("exclude_from_weight_decay", None, _names_list, keras=False, step=False, faces=(OPTAX,)),
    Option("weight_decay_mask", None, _as_given, keras=False, step=False, faces=(OPTAX,)),  # read at init
)
#: every option, in polyak.SGD's order
OPTIONS = (LEARNING_RATE, *RULE, *BASE, NAME, *EXCLUSION)
BY_NAME = {o.name: o for o in OPTIONS}
STEP = tuple(o for o in BASE if o.step)
PER_GROUP = tuple(o for o in OPTIONS if o.per_group)
CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")


def of_face(face: str) -> tuple[Option, ...]:
    """The options ``face`` takes."""
    return tuple(o for o in OPTIONS if face in o.faces)


def names(face: str) -> list[str]:
    """``face``'s names for its options (its keywords, besides ``params`` on the torch face)."""
    return [o.name_on(face) for o in of_face(face)]


def checked(rows: Iterable[Option], values: Mapping[str, Any], face: str = KERAS,
            label: Callable[[str], str] = lambda name: name) -> dict[str, Any]:
    """Each row's value in ``values`` (keyed by ``face``'s names; the default when absent),
    checked, keyed by Keras's names. ``label(face's name)`` is the name an error gives."""
    out = {}
    for o in rows:
        own = o.name_on(face)
        out[o.name] = o.check(label(own), values.get(own, o.default))
    return out


def check_one_clipping(values: Mapping[str, Any]) -> None:
    if sum(values.get(name) is not None for name in CLIPPING) > 1:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
            f"clipnorm={values.get('clipnorm')}, clipvalue={values.get('clipvalue')}, "
            f"global_clipnorm={values.get('global_clipnorm')}"
        )


def config_of(rows: Iterable[Option], values: Callable[[str], Any]) -> dict[str, Any]:
    """The rows as ``get_config`` writes them (``values(name)`` reads each): Keras's always,
    polyak's own when not their default."""
    config = {}
    for o in rows:
        value = values(o.name)
        if o.keras or value != o.default:
            config[o.name] = value
    return config
