"""Unknown keyword arguments: Keras's error, and what the caller probably meant.

Every face raises the same ``ValueError`` for the same unknown keyword, in Keras's words
(``Argument(s) not recognized: {...}``), followed by one hint per keyword: the accepted
name it is closest to, or, for the learning rate's name on the other faces (``lr`` is
``polyak.torch.SGD``'s, ``learning_rate`` the others') or a misspelling of it, the name this
face takes.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterable

from polyak import options

#: each face's name for the learning rate (the options table's)
RATE_NAMES = {face: options.LEARNING_RATE.name_on(face) for face in options.FACES}
#: each of those names, and the first face that calls the rate so
_OWNER = {name: face for face, name in reversed(RATE_NAMES.items())}


def _hint(face: str, key: str, accepted: list[str]) -> str | None:
    own = RATE_NAMES.get(face, "learning_rate")
    if key in _OWNER and key != own and own in accepted:
        return f"`{key}`: {face} takes `{own}` (`{key}` is {_OWNER[key]}'s name for it)."
    others = {name: own for name in _OWNER if name != own and own in accepted}  # another face's spelling
    close = difflib.get_close_matches(key, [*accepted, *others], n=1)
    return f"`{key}`: did you mean `{others.get(close[0], close[0])}`?" if close else None


def hints(face: str, unknown: Iterable[str], accepted: Iterable[str]) -> list[str]:
    """A sentence for each of the ``unknown`` names that resembles one of ``accepted``."""
    accepted = list(accepted)
    return [h for h in (_hint(face, key, accepted) for key in unknown) if h]


def not_recognized(face: str, unknown: dict[str, Any], accepted: Iterable[str]) -> ValueError:
    """The error for the keywords ``unknown`` given to ``face`` (``"polyak.SGD"``, ...), which
    takes the keywords ``accepted``."""
    return ValueError(" ".join([f"Argument(s) not recognized: {unknown}.", *hints(face, unknown, accepted)]))


def keywords(function: Any) -> list[str]:
    """The names ``function`` takes as keywords."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds and p.name != "self"]


def accepted_keywords(cls: type, stop: type) -> list[str]:
    """The keyword names that ``cls``'s constructors take, from ``cls`` up to ``stop`` (the base
    class whose ``**kwargs`` is where unknown keywords end up)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names += [name for name in keywords(klass.__init__) if name not in names]
        if klass is stop:
            break
    return names


def face_name(cls: type) -> str:
    """How an error names the class: ``polyak.SGD`` for polyak's own, else the class's name."""
    return f"polyak.{cls.__name__}" if cls.__module__.startswith("polyak.") else cls.__name__
