"""Argument checks that name the argument and the value received.

Every public entry point validates with these before it changes anything, so a
rejected call leaves all state as it was.
"""

import math
import numbers


def fail(name, value, requirement, error=ValueError):
    raise error(f"`{name}` must be {requirement}. Received: {name}={value!r}")


def is_real(value) -> bool:
    """A real number that is not a bool (NumPy scalars and 0-d arrays count)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    shape = getattr(value, "shape", None)
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return shape == () and kind in ("f", "i", "u")


def real(name, value, *, low=None, high=None, low_open=False, optional=False):
    """Return ``value`` as a Python float after checking it is finite and in range."""
    if value is None and optional:
        return None
    if not is_real(value):
        fail(name, value, "a real number" + (" or None" if optional else ""), TypeError)
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range
        fail(name, value, "finite")
    if not math.isfinite(value):
        fail(name, value, "finite")
    if low is not None and (value < low or (low_open and value == low)):
        fail(name, value, f"{'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        fail(name, value, f"<= {high}")
    return value


INT64_MAX = 2**63 - 1


def integer(name, value, *, low=None, high=INT64_MAX, optional=False):
    """Return ``value`` as a Python int after checking it is an integer in ``[low, high]``
    (by default at most int64's largest, as the step arithmetic is int64)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, value, "an integer" + (" or None" if optional else ""), TypeError)
    value = int(value)
    if low is not None and value < low:
        fail(name, value, f"an integer >= {low}")
    if high is not None and value > high:
        fail(name, value, f"an integer <= {high}")
    return value


def boolean(name, value):
    if not isinstance(value, bool):
        fail(name, value, "a bool (True or False)", TypeError)
    return value


def string(name, value, *, optional=False):
    if value is None and optional:
        return None
    if not isinstance(value, str):
        fail(name, value, "a string" + (" or None" if optional else ""), TypeError)
    return value
