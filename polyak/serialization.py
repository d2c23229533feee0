"""Configs in and out: the Keras serialization format, with a closed registry.

A serialized object is Keras's dict ``{"module", "class_name", "config",
"registered_name"}``, so configs move between Keras and polyak. Deserializing
only ever instantiates classes that polyak ships or that the user registered
with :func:`register`; nothing is imported or called by name otherwise.
"""

from __future__ import annotations

from typing import Any

_BUILTINS: dict[str, dict[str, type]] = {}  # kind -> {class name (any case): class}
_REGISTERED: dict[str, type] = {}  # "package>name" -> class


def builtin(kind: str, module: str):
    """Class decorator: a class polyak ships, serialized under ``module``."""

    def decorate(cls):
        cls._serialization_module = module
        _BUILTINS.setdefault(kind, {})[cls.__name__] = cls
        return cls

    return decorate


def register(package: str = "Custom", name: str | None = None):
    """Register a user class (an optimizer or schedule) so its configs can be loaded.

    Use as a decorator, like ``keras.saving.register_keras_serializable``::

        @polyak.register(package="my_project")
        class WarmupThenConstant(polyak.schedules.LearningRateSchedule): ...
    """

    def decorate(cls):
        key = f"{package}>{name or cls.__name__}"
        if _REGISTERED.get(key, cls) is not cls:
            raise ValueError(f"`{key}` is already registered to {_REGISTERED[key]!r}.")
        _REGISTERED[key] = cls
        cls._registered_name = key
        return cls

    return decorate


def serialize(obj) -> dict[str, Any]:
    """The Keras-format dict of a polyak object (anything with ``get_config``)."""
    cls = type(obj)
    registered = cls.__dict__.get("_registered_name")
    return {
        "module": cls.__dict__.get("_serialization_module", cls.__module__),
        "class_name": cls.__name__,
        "config": obj.get_config(),
        "registered_name": registered,
    }


def resolve(kind: str, config: dict, custom_objects: dict | None = None) -> type:
    """The class a serialized dict names: registered, custom, or built-in; never imported."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"A serialized {kind} must be a dict with a 'class_name'. Received: {config!r}")
    class_name = config["class_name"]
    registered = config.get("registered_name")
    custom_objects = custom_objects or {}
    for key in (registered, class_name):
        if key in custom_objects:
            return custom_objects[key]
        if key in _REGISTERED:
            return _REGISTERED[key]
    builtins = _BUILTINS.get(kind, {})
    by_lower = {name.lower(): cls for name, cls in builtins.items()}
    if isinstance(class_name, str) and class_name.lower() in by_lower:
        return by_lower[class_name.lower()]
    raise ValueError(
        f"Unknown {kind} '{class_name}'. Known: {sorted(builtins)} plus classes registered "
        f"with polyak.register ({sorted(_REGISTERED)}) or passed in custom_objects."
    )


def deserialize(kind: str, config: dict, custom_objects: dict | None = None):
    cls = resolve(kind, config, custom_objects)
    inner = config.get("config", {})
    if not isinstance(inner, dict):
        raise ValueError(f"The 'config' of a serialized {kind} must be a dict. Received: {inner!r}")
    if kind == "optimizer":
        return cls.from_config(dict(inner), custom_objects=custom_objects)
    return cls.from_config(dict(inner))
