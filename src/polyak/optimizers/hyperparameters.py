"""The optimizer's hyperparameters, in one table: validation, config and plan read it.

Each row names an argument of Keras's ``Optimizer`` (or one of polyak's own), its default,
and how a value is checked. The constructor checks every row, ``get_config`` writes the rows
in Keras's order (polyak's own only when they differ from their default, so configs stay
Keras's), the step's plan copies the rows it reads, and ``LossScaleOptimizer`` refuses the
rows it does not take.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from polyak import validation


class Hyperparameter(NamedTuple):
    name: str
    default: Any
    check: Callable[[str, Any], Any]  #: ``check(name, value) -> value``, raising on bad input
    keras: bool = True  #: an argument of Keras's; polyak's own appear in configs only when set
    step: bool = True  #: read by the step (a field of ``StepPlan``)


def _real(**bounds):
    return lambda name, value: validation.real(name, value, **bounds)


def _integer(**bounds):
    return lambda name, value: validation.integer(name, value, **bounds)


#: Keras's base arguments in Keras's config order, then polyak's own.
BASE = (
    Hyperparameter("weight_decay", None, _real(low=0, optional=True)),
    Hyperparameter("clipnorm", None, _real(low=0, optional=True)),
    Hyperparameter("global_clipnorm", None, _real(low=0, optional=True)),
    Hyperparameter("clipvalue", None, _real(low=0, optional=True)),
    Hyperparameter("use_ema", False, validation.boolean),
    Hyperparameter("ema_momentum", 0.99, _real(low=0, high=1)),
    Hyperparameter("ema_overwrite_frequency", None, _integer(low=1, optional=True)),
    Hyperparameter("loss_scale_factor", None, _real(low=0, low_open=True, optional=True)),
    Hyperparameter("gradient_accumulation_steps", None, _integer(low=2, optional=True)),
    Hyperparameter("master_weights", False, validation.boolean, keras=False, step=False),
    Hyperparameter("skip_nonfinite", False, validation.boolean, keras=False),
)

STEP = tuple(h for h in BASE if h.step)
CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")


def checked(table, values: dict) -> dict:
    """Every row's value from ``values`` (its default when absent), checked."""
    return {h.name: h.check(h.name, values.get(h.name, h.default)) for h in table}


def check_one_clipping(values: dict) -> None:
    if sum(values.get(name) is not None for name in CLIPPING) > 1:
        raise ValueError(
            "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
            f"clipnorm={values.get('clipnorm')}, clipvalue={values.get('clipvalue')}, "
            f"global_clipnorm={values.get('global_clipnorm')}"
        )


def config_of(table, optimizer) -> dict:
    """The rows as ``get_config`` writes them: Keras's always, polyak's own when not default."""
    config = {}
    for h in table:
        value = getattr(optimizer, h.name)
        if h.keras or value != h.default:
            config[h.name] = value
    return config
