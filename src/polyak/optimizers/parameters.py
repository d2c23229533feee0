"""The weights an optimizer trains: ``polyak.Variable``s or plain arrays.

A plain NumPy array (views and non-contiguous arrays too) or torch tensor
(``nn.Parameter`` included) is trained in place: the optimizer copies each new
value into the storage the user handed it. A plain JAX array is immutable: it
can be trained through ``stateless_apply`` or by wrapping it in a Variable.
"""

from __future__ import annotations

import sys

import numpy as np

from polyak.backends import backend_for, kind_of
from polyak.variable import Variable


def value_of(parameter):
    return parameter.value if isinstance(parameter, Variable) else parameter


def _default_name(default):
    return default if isinstance(default, str) else f"variable_{default}"


def name_of(parameter, default):
    """A Variable's name; a plain array is called by its position: ``default``, a name or an
    index (``variable_{index}``)."""
    return parameter.name if isinstance(parameter, Variable) else _default_name(default)


def path_of(parameter, default):
    return parameter.path if isinstance(parameter, Variable) else _default_name(default)


def write(parameter, value, backend=None):
    """Assign a Variable; copy into a plain array in place (``backend``: the array's, found if omitted)."""
    if isinstance(parameter, Variable):
        parameter.assign(value)
    else:
        (backend or backend_for([parameter])).write(parameter, value)


def check_parameters(parameters, paths=None) -> list:
    """The parameters as a list, after checking each is a Variable or an array of a floating
    dtype, all of one kind and on one device (``paths`` name them; by default by position)."""
    parameters = list(parameters)
    paths = [path_of(p, d) for p, d in zip(parameters, paths or range(len(parameters)))]
    values = [value_of(p) for p in parameters]
    for i, (p, value) in enumerate(zip(parameters, values)):
        check_not_keras(i, p)
        if kind_of(value) is None:
            raise TypeError(
                f"Trainable variable {i} must be a polyak.Variable or an array. "
                f"Received: trainable_variables[{i}] of type {type(p).__name__}"
            )
    backend = backend_for(values, paths)
    for value, path in zip(values, paths):
        if not backend.is_floating(value.dtype):
            raise TypeError(f"Trainable variable {path!r} must have a floating dtype. Received: dtype={value.dtype}")
    for p, path in zip(parameters, paths):
        _check_leaf(p, path)
    if "torch.distributed.tensor" in sys.modules:  # DTensors exist only once it was imported
        from polyak.tiers import dtensors

        dtensors.check_one_mesh(values, paths)
    return parameters


def is_keras_variable(parameter) -> bool:
    """Whether ``parameter`` is a ``keras.Variable`` (told by its class's module: Keras is not
    imported for it)."""
    return any(klass.__module__.split(".")[0] == "keras" for klass in type(parameter).__mro__[:-1])


def check_not_keras(index, parameter):
    """Refuse a ``keras.Variable``, saying what to pass instead (on every face alike)."""
    if is_keras_variable(parameter):
        raise TypeError(
            f"Trainable variable {index} is a Keras variable: polyak.SGD steps polyak.Variables and arrays "
            "(NumPy arrays, torch tensors, JAX arrays), not keras.Variables. To train a Keras model, use "
            "keras.optimizers.SGD in `model.fit`, or step the variables' arrays, "
            "`[v.value for v in model.trainable_variables]`: NumPy arrays and torch tensors are updated in "
            "place; JAX arrays are not, so call `stateless_apply` and `v.assign` each new value. "
            f"Received: trainable_variables[{index}] of type {type(parameter).__name__} "
            f"(from {type(parameter).__module__})"
        )


def _check_leaf(parameter, path):
    """Refuse a torch tensor computed from others (``t * 2``): updating it would update a
    temporary, never the tensor it was computed from. (Only torch tensors have ``grad_fn``.)"""
    grad_fn = getattr(parameter, "grad_fn", None)
    if grad_fn is not None:
        raise ValueError(
            f"Trainable variable {path!r} is a non-leaf torch tensor: it was computed from other tensors, "
            "so updating it would update a temporary. Pass the leaf tensor itself (e.g. the nn.Parameter). "
            f"Received: a tensor of shape {tuple(parameter.shape)} with grad_fn={type(grad_fn).__name__}"
        )


def check_writable(backend, parameters, paths):
    """Raise before any write if a plain array among ``parameters`` cannot be updated in place."""
    for p, path in zip(parameters, paths):
        if isinstance(p, np.generic):
            raise backend.unwritable_error(
                f"Trainable variable {path!r} is a NumPy scalar, which is immutable and cannot be updated in "
                f"place. Pass a 0-d array (`np.array({p.item()!r}, np.{p.dtype.name})`) or a polyak.Variable. "
                f"Received: {type(p).__name__} {p!r}"
            )
        _check_leaf(p, path)
        if not isinstance(p, Variable) and not backend.writable(p):
            raise backend.unwritable_error(
                f"Trainable variable {path!r} cannot be updated in place: {backend.unwritable_hint}. "
                f"Received: {type(p).__name__}"
            )


def check_known(parameters, known):
    """Raise unless every parameter is one the optimizer was built on (``known``: ids)."""
    for v in parameters:
        if id(v) not in known:
            raise ValueError(
                f"Unknown variable: {v!r}. This optimizer can only be called for the variables it was "
                "originally built with. When working with a new set of variables, you should recreate a "
                "new optimizer instance."
            )


def are_the_built(variables, built) -> bool:
    """Whether ``variables`` holds exactly the weights ``built``, in order (the same objects)."""
    return variables is built or (len(variables) == len(built) and all(a is b for a, b in zip(variables, built)))
