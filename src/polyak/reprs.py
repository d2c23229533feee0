"""Reprs that read as the call making the object: ``SGD(learning_rate=0.1, momentum=0.9)``.

Only the arguments that differ from the constructor's defaults are shown, so a repr says
what was chosen; the defaults are read from the signatures of the class and its bases.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

_PLAIN = (bool, int, float, str, type(None))


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Every keyword's default in the constructors of ``cls`` and its bases (a subclass's wins)."""
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.default is not p.empty:
                    defaults[p.name] = p.default
    return defaults


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if isinstance(value, bool) or isinstance(default, bool):  # True == 1, but not as a default
        return False
    return isinstance(value, _PLAIN) and isinstance(default, _PLAIN) and value == default


def call_repr(obj: object, arguments: dict[str, Any]) -> str:
    """``Name(key=value, ...)`` with the ``arguments`` that are not their default."""
    defaults = constructor_defaults(type(obj))
    shown = [f"{key}={value!r}" for key, value in arguments.items()
             if not (key in defaults and _is_default(value, defaults[key]))]
    return f"{type(obj).__name__}({', '.join(shown)})"


def float32(value: Any) -> float:
    """A float32 number as the shortest float that rounds to it (``0.1``, not ``0.10000000149011612``)."""
    return float(str(np.float32(value)))
