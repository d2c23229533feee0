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
_BASES: dict[str, type] = {}  # kind -> the class its objects derive from (declared by that class)


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


def base_class(kind: str):
    """Class decorator: the class every serialized ``kind`` object must derive from."""

    def decorate(cls):
        _BASES[kind] = cls
        return cls

    return decorate


def _base_class(kind: str) -> type:
    if kind not in _BASES:
        raise ValueError(f"Unknown kind of serialized object: {kind!r}")
    return _BASES[kind]


def resolve(kind: str, config: dict, custom_objects: dict | None = None) -> type:
    """The class a serialized dict names: registered, custom, or built-in; never imported.

    ``module`` is ignored: a name is only ever looked up in ``custom_objects``,
    the registry and polyak's built-ins, and what is found must be a class of
    the right kind (an ``Optimizer`` or a ``LearningRateSchedule`` subclass).
    """
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ValueError(f"A serialized {kind} must be a dict with a string 'class_name'. Received: {config!r}")
    class_name = config["class_name"]
    registered = config.get("registered_name")
    if registered is not None and not isinstance(registered, str):
        raise ValueError(f"'registered_name' of a serialized {kind} must be a string or None. "
                         f"Received: registered_name={registered!r}")
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(f"`custom_objects` must be a dict or None. Received: custom_objects={custom_objects!r}")
    custom_objects = custom_objects or {}
    found = None
    for key in (registered, class_name):
        if key in custom_objects:
            found = custom_objects[key]
        elif key in _REGISTERED:
            found = _REGISTERED[key]
        if found is not None:
            break
    if found is None:
        by_lower = {name.lower(): cls for name, cls in _BUILTINS.get(kind, {}).items()}
        found = by_lower.get(class_name.lower())
    if found is None:
        raise ValueError(
            f"Unknown {kind} '{class_name}'. Known: {sorted(_BUILTINS.get(kind, {}))} plus classes registered "
            f"with polyak.register ({sorted(_REGISTERED)}) or passed in custom_objects."
        )
    base = _base_class(kind)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ValueError(
            f"'{class_name}' resolves to {found!r}, which is not a subclass of {base.__name__}; a serialized "
            f"{kind} only builds {base.__name__} classes."
        )
    return found


def deserialize(kind: str, config: dict, custom_objects: dict | None = None):
    """Instantiate a serialized ``kind`` from its class's ``from_config``; nothing else is called."""
    cls = resolve(kind, config, custom_objects)
    inner = config.get("config", {})
    if not isinstance(inner, dict) or not all(isinstance(key, str) for key in inner):
        raise ValueError(f"The 'config' of a serialized {kind} must be a dict with string keys. Received: {inner!r}")
    if kind == "optimizer":
        return cls.from_config(dict(inner), custom_objects=custom_objects)
    return cls.from_config(dict(inner))
