"""The SGD update rule with heavy-ball or Nesterov momentum, in Keras's convention.

With ``momentum == 0``::

    w <- w - lr * g

otherwise, with velocity ``v`` (zero at the start)::

    v <- momentum * v - lr * g
    w <- w + v                          (heavy ball)
    w <- w + momentum * v - lr * g      (Nesterov)

The velocity carries the learning rate inside it (unlike ``torch.optim.SGD``,
whose buffer is ``momentum * b + g`` and is scaled by lr afterwards), so a
learning-rate change takes effect through new gradients only.
"""

from __future__ import annotations


def sgd_update(bk, grads, params, velocities, learning_rate, momentum, nesterov):
    """One step on lists of tensors. ``velocities`` is ``None`` when ``momentum == 0``.

    Returns ``(new_params, new_velocities)``; learning rate, momentum and
    gradients are cast to each weight's dtype first, as Keras does.
    """
    new_params, new_velocities = [], []
    for i, (g, w) in enumerate(zip(grads, params)):
        lr = bk.cast(learning_rate, w.dtype)
        g = bk.cast(g, w.dtype)
        if velocities is None:
            new_params.append(w - g * lr)
            continue
        m = bk.scalar(momentum, w.dtype)
        v = velocities[i] * m - g * lr
        new_velocities.append(v)
        new_params.append(w + (v * m - g * lr) if nesterov else bk.add(w, v))
    return new_params, (None if velocities is None else new_velocities)
