"""The ``keras.optimizers`` namespace: port Keras code by changing one import."""

from typing import Any

from polyak import schedules, serialization
from polyak.optimizers.base import Optimizer
from polyak.optimizers.loss_scale_optimizer import LossScaleOptimizer
from polyak.optimizers.sgd import SGD

__all__ = ["Optimizer", "SGD", "LossScaleOptimizer", "schedules", "get", "serialize", "deserialize"]


def serialize(optimizer: Optimizer) -> dict[str, Any]:
    """The optimizer's config in Keras's format (``module``, ``class_name``, ``config``)."""
    return serialization.serialize(optimizer)


def deserialize(config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Optimizer:
    """An optimizer from ``serialize`` output; class names are matched case-insensitively
    against polyak's optimizers and the classes registered with ``polyak.register``."""
    return serialization.deserialize("optimizer", config, custom_objects)


def get(identifier: str | dict[str, Any] | Optimizer | None) -> Optimizer | None:
    """An optimizer from a name (``"sgd"``), a serialized dict, or an instance; None stays None."""
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        obj = deserialize(identifier)
    elif isinstance(identifier, str):
        obj = deserialize({"class_name": identifier, "config": {}})
    else:
        obj = identifier
    if isinstance(obj, Optimizer):
        return obj
    raise ValueError(f"Could not interpret optimizer identifier: {identifier}")
