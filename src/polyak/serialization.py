"""Configs in and out: the Keras serialization format, with a closed registry.

A serialized object is Keras's dict ``{"module", "class_name", "config",
"registered_name"}``, so configs move between Keras and polyak. Deserializing
only ever instantiates classes that polyak ships or that the user registered
with :func:`register`; nothing is imported or called by name otherwise.
"""

from __future__ import annotations

import base64
import marshal
import types
import warnings
from typing import Any, Callable, TypeVar

import numpy as np

_T = TypeVar("_T")
_BUILTINS: dict[str, dict[str, type]] = {}  # kind -> {class name (any case): class}
_REGISTERED: dict[str, Any] = {}  # "package>name" -> class or function
_BASES: dict[str, type] = {}  # kind -> the class its objects derive from (declared by that class)


def builtin(kind: str, module: str):
    """Class decorator: a class polyak ships, serialized under ``module``."""

    def decorate(cls):
        cls._serialization_module = module
        _BUILTINS.setdefault(kind, {})[cls.__name__] = cls
        return cls

    return decorate


def register(package: str = "Custom", name: str | None = None) -> Callable[[_T], _T]:
    """Register a user class (an optimizer or schedule) or a learning-rate function
    so its configs can be loaded.

    Use as a decorator, like ``keras.saving.register_keras_serializable``::

        @polyak.register(package="my_project")
        class WarmupThenConstant(polyak.schedules.LearningRateSchedule): ...

        @polyak.register(package="my_project")
        def constant_rate():
            return 0.01
    """

    def decorate(cls: Any) -> Any:
        key = f"{package}>{name or cls.__name__}"
        if _REGISTERED.get(key, cls) is not cls:
            raise ValueError(f"`{key}` is already registered to {_REGISTERED[key]!r}.")
        _REGISTERED[key] = cls
        cls._registered_name = key
        return cls

    return decorate


def _is_array(value) -> bool:
    """A NumPy, PyTorch or JAX array or scalar (what Keras's backends call a tensor)."""
    return isinstance(value, (np.ndarray, np.generic)) or (
        hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "tolist")
    )


def _tensor_config(value) -> dict[str, Any]:
    """Keras's ``__tensor__`` form of an array: its values as nested lists, and its dtype."""
    dtype = value.dtype
    dtype = str(dtype).removeprefix("torch.") if not isinstance(dtype, np.dtype) else dtype.name
    if hasattr(value, "detach"):  # a torch tensor, possibly on an accelerator
        value = value.detach().cpu()
    return {"class_name": "__tensor__", "config": {"value": value.tolist(), "dtype": dtype}}


def _array_from_config(value):
    """A NumPy array from Keras's ``__tensor__`` form; any other value as it is.

    Only real numeric dtypes are accepted: the dtype name is looked up by NumPy,
    nothing is imported or called."""
    if not (isinstance(value, dict) and value.get("class_name") == "__tensor__"):
        return value
    inner = value.get("config")
    dtype = inner.get("dtype") if isinstance(inner, dict) else None
    try:
        dtype = np.dtype(dtype) if isinstance(dtype, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "fiu":
        raise ValueError(f"A serialized tensor must have a real numeric 'dtype'. Received: {value!r}")
    return np.asarray(inner.get("value"), dtype=dtype)


def serialize(obj) -> dict[str, Any]:
    """The Keras-format dict of a polyak object (anything with ``get_config``).

    Array values in the config are written in Keras's ``__tensor__`` form."""
    cls = type(obj)
    registered = cls.__dict__.get("_registered_name")
    config = {key: _tensor_config(value) if _is_array(value) else value for key, value in obj.get_config().items()}
    return {
        "module": cls.__dict__.get("_serialization_module", cls.__module__),
        "class_name": cls.__name__,
        "config": config,
        "registered_name": registered,
    }


def base_class(kind: str):
    """Class decorator: the class every serialized ``kind`` object must derive from."""

    def decorate(cls):
        _BASES[kind] = cls
        return cls

    return decorate


def serialize_function(fn) -> dict[str, Any]:
    """Keras's config of a learning-rate function, written as Keras 3 writes it.

    A named function is a reference by name (its ``polyak.register`` name if it
    has one); a lambda is Keras's ``__lambda__`` form (marshalled bytecode), which
    is written, with a warning, but never loaded.
    """
    if not isinstance(fn, types.FunctionType):
        raise TypeError(
            f"Cannot serialize the learning rate {fn!r} of type {type(fn).__name__}: only a float, a "
            "LearningRateSchedule or a plain Python function can be serialized (a named function registered "
            "with polyak.register can also be loaded)."
        )
    if fn.__name__ == "<lambda>":
        warnings.warn(
            "The learning rate is a `lambda`: its config can be written but never loaded, as loading it would "
            "run arbitrary code. Use a named function registered with `@polyak.register(package=...)` instead.",
            stacklevel=3,
        )
        code = base64.encodebytes(marshal.dumps(fn.__code__)).decode("ascii")
        closure = tuple(cell.cell_contents for cell in fn.__closure__) if fn.__closure__ else None
        return {"class_name": "__lambda__", "config": {"value": (code, fn.__defaults__, closure)}}
    return {
        "module": "builtins",
        "class_name": "function",
        "config": fn.__dict__.get("_registered_name", fn.__name__),
        "registered_name": "function",
    }


def _how_to_register(name: str) -> str:
    return (
        f"Register the function with `@polyak.register(package=...)` before loading (its config then names it "
        f"'package>{name}'), or pass it as custom_objects={{{name!r}: {name}}}."
    )


def deserialize_function(config: dict, custom_objects: dict | None = None):
    """The function a config written by :func:`serialize_function` names.

    Only functions registered with :func:`register` or passed in
    ``custom_objects`` are returned; a lambda is refused, as loading it would
    mean running the bytecode stored in the config.
    """
    if config.get("class_name") == "__lambda__":
        raise ValueError(
            "The config holds a Python lambda as the learning rate; polyak never loads one, as that would run the "
            "bytecode stored in the config. Define the rate as a named function, register it with "
            "`@polyak.register(package=...)`, and write the config again."
        )
    name = config.get("config")
    if not isinstance(name, str):
        raise ValueError(f"A serialized function must name the function by a string 'config'. Received: {config!r}")
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError(f"`custom_objects` must be a dict or None. Received: custom_objects={custom_objects!r}")
    found = (custom_objects or {}).get(name, _REGISTERED.get(name))
    if found is None:
        raise ValueError(f"Unknown learning-rate function '{name}'. " + _how_to_register(name.split(">")[-1]))
    if not isinstance(found, types.FunctionType):
        raise ValueError(f"'{name}' resolves to {found!r}, which is not a function.")
    return found


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
    inner = {key: _array_from_config(value) for key, value in inner.items()}
    if kind == "optimizer":
        return cls.from_config(inner, custom_objects=custom_objects)
    return cls.from_config(inner)
