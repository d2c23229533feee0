"""Keras-style automatic names: ``SGD`` -> ``sgd``, ``sgd_1``, ``sgd_2``, ...

The counters live for the process, as Keras's do, until :func:`clear_session`
starts them again, as ``keras.utils.clear_session()`` does.
"""

import collections
import itertools
import re

_counters = collections.defaultdict(itertools.count)


def to_snake_case(name: str) -> str:
    """``"CosineDecay"`` -> ``"cosine_decay"``, as Keras spells object names."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def auto_name(prefix: str) -> str:
    """A process-unique name: the snake-cased prefix, then ``prefix_1``, ..."""
    prefix = to_snake_case(prefix)
    n = next(_counters[prefix])
    return prefix if n == 0 else f"{prefix}_{n}"


def is_auto_name(name: str, prefix: str) -> bool:
    """Whether ``name`` is one that ``auto_name(prefix)`` makes (``sgd``, ``sgd_3``)."""
    return re.fullmatch(f"{re.escape(to_snake_case(prefix))}(_[1-9][0-9]*)?", name) is not None


def clear_session() -> None:
    """Start every automatic name again: the next ``SGD()`` is ``sgd``, the next
    unnamed ``Variable`` is ``variable`` (Keras's ``clear_session()`` does the same
    to its names). Objects already made keep their names."""
    _counters.clear()
