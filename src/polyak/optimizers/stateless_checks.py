"""Checks of ``stateless_apply``'s arguments against what the optimizer was built on."""

from __future__ import annotations

from polyak.optimizers import parameters as params_mod


def check_built(optimizer):
    """A ``ValueError`` unless ``optimizer`` has been built (its variables exist)."""
    if not optimizer.built:
        raise ValueError(
            f"To call `stateless_apply`, {type(optimizer).__name__} must be built (i.e. its variables must have "
            "been created). You can build it via `optimizer.build(trainable_variables)`."
        )


def check_counts(optimizer, optimizer_variables, trainable_variables):
    """One value per optimizer variable and one per built weight, or a ``ValueError``."""
    if len(optimizer_variables) != len(optimizer.variables):
        raise ValueError(
            "Argument `optimizer_variables` must be a list of tensors corresponding 1:1 to "
            f"{type(optimizer).__name__}().variables. Received list with length {len(optimizer_variables)}, "
            f"but expected {len(optimizer.variables)} variables."
        )
    if len(trainable_variables) != len(optimizer._trainable_variables):
        raise ValueError(
            "Argument `trainable_variables` must be a list of tensors corresponding 1:1 to the trainable "
            f"variables list that the optimizer was built with. Received len(trainable_variables) == "
            f"{len(trainable_variables)} whereas the optimizer was built with "
            f"{len(optimizer._trainable_variables)} variables."
        )


def converted(optimizer, optimizer_variables, trainable_variables):
    """``(optimizer values, weight values)`` as arrays of the optimizer's backend, each of
    the shape of what it stands for; errors name the variable."""
    bk = optimizer._backend
    values = []
    for k, (given, variable) in enumerate(zip(optimizer_variables, optimizer.variables)):
        value = bk.convert(given, f"optimizer_variables[{k}] ({variable.path!r})")
        if tuple(value.shape) != variable.shape:
            raise ValueError(
                f"optimizer_variables[{k}] must have the shape {variable.shape} of {variable.path!r}. "
                f"Received: shape {tuple(value.shape)}"
            )
        values.append(value)
    params = []
    for given, built, path in zip(trainable_variables, optimizer._trainable_variables, optimizer._trainable_paths):
        value = bk.convert(given, f"The trainable_variables value for {path!r}")
        expected = tuple(params_mod.value_of(built).shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"trainable_variables value for {path!r} must have the shape {expected}. "
                f"Received: shape {tuple(value.shape)}"
            )
        params.append(value)
    return values, params
