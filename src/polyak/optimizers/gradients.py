"""Gradient checks: every gradient an array of its variable's shape, or None."""

from __future__ import annotations

import warnings


def check_gradients(bk, grads, values, paths):
    """Gradients as arrays of ``bk``, aligned with the weights' ``values``.

    ``paths`` name the weights in error messages. Gradients of another array
    kind are converted when that needs no device transfer (``bk.convert_gradient``);
    integer gradients are cast to the weight's dtype. Raises before anything is
    written; warns, as Keras does, about weights that got no gradient.
    """
    if len(grads) != len(values):
        raise ValueError(
            f"`grads` and `trainable_variables` must have the same length. Received: "
            f"{len(grads)} gradients for {len(values)} variables."
        )
    checked, missing = [], []
    for g, value, path in zip(grads, values, paths):
        if g is None:
            checked.append(None)
            missing.append(path)
            continue
        try:
            g = bk.convert(g, f"The gradient for variable {path!r}")
        except (TypeError, ValueError) as error:
            if path in str(error):
                raise
            raise TypeError(
                f"The gradient for variable {path!r} is not an array: {str(error).rstrip('.')}. Received: {g!r}"
            ) from None
        kind = bk.kind(g.dtype) if bk.owns(g) else None
        if kind not in ("f", "i", "u"):
            raise TypeError(
                f"The gradient for variable {path!r} must be a real number array. Received: dtype={g.dtype}"
            )
        if kind in ("i", "u"):
            g = bk.cast(g, value.dtype)
        if tuple(g.shape) != tuple(value.shape):
            raise ValueError(
                f"The gradient for variable {path!r} must have the variable's shape {tuple(value.shape)}. "
                f"Received: gradient shape {tuple(g.shape)}"
            )
        checked.append(g)
    if all(g is None for g in checked):
        raise ValueError("No gradients provided for any variable.")
    if missing:
        warnings.warn(
            f"Gradients do not exist for variables {missing} when minimizing the loss: they were "
            "not updated. Check that the loss depends on them, or leave them out of the variables "
            "passed to `apply`.",
            stacklevel=3,
        )
    return checked
