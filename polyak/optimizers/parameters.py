"""The weights an optimizer trains: ``polyak.Variable``s or plain, writable arrays.

A plain NumPy array is trained in place (views and non-contiguous arrays too):
the optimizer copies each new value into the array the user handed it.
"""

from __future__ import annotations

from polyak.backends import backend_for
from polyak.variable import Variable


def value_of(parameter):
    return parameter.value if isinstance(parameter, Variable) else parameter


def name_of(parameter, index):
    """A Variable's name; a plain array is called ``variable_{index}``."""
    return parameter.name if isinstance(parameter, Variable) else f"variable_{index}"


def path_of(parameter, index):
    return parameter.path if isinstance(parameter, Variable) else f"variable_{index}"


def write(parameter, value):
    if isinstance(parameter, Variable):
        parameter.assign(value)
    else:
        backend_for([parameter]).write(parameter, value)


def check_parameters(parameters) -> list:
    """The parameters as a list, after checking each is a trainable, writable float array."""
    parameters = list(parameters)
    for i, p in enumerate(parameters):
        value = value_of(p)
        bk = backend_for([value])
        if not bk.owns(value):
            raise TypeError(
                f"Trainable variable {i} must be a polyak.Variable or an array. "
                f"Received: trainable_variables[{i}] of type {type(p).__name__}"
            )
        if not bk.is_floating(value.dtype):
            raise TypeError(
                f"Trainable variable {path_of(p, i)!r} must have a floating dtype. "
                f"Received: dtype={value.dtype}"
            )
        if not isinstance(p, Variable) and not bk.writable(p):
            raise ValueError(
                f"Trainable variable {i} is a read-only array; the optimizer updates arrays in place. "
                f"Pass a writable array (e.g. `array.copy()`) or a polyak.Variable."
            )
    return parameters
