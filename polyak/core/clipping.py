"""Gradient clipping, exactly as Keras 3 computes it.

* ``clip_by_norm``: ``g * c / max(||g||, c)`` per tensor.
* ``clip_by_value``: ``clip(g, -c, c)`` elementwise.
* ``clip_by_global_norm``: every ``g * c * min(1 / N, 1 / c)`` with ``N`` the
  norm of all gradients together; a non-finite ``N`` turns every gradient into
  NaN (Keras's ``+ (N - N)``), so a poisoned step is visible, not silent.
"""

from __future__ import annotations


def clip_by_norm(xp, g, clipnorm):
    squares = xp.sum(xp.square(g), keepdims=True)
    positive = squares > 0
    norm = xp.where(positive, xp.sqrt(xp.where(positive, squares, xp.ones_like(squares))), squares)
    return (g * clipnorm) / xp.maximum(norm, clipnorm)


def clip_by_value(xp, g, clipvalue):
    return xp.clip(g, -clipvalue, clipvalue)


def global_norm(xp, grads):
    """``sqrt(sum over tensors of sum(g ** 2))``, summed per tensor first as Keras does."""
    return xp.sqrt(xp.sum(xp.stack([xp.sum(xp.square(g)) for g in grads])))


def global_scale(xp, norm, clipnorm):
    """The factor every gradient is multiplied by (NaN when ``norm`` is not finite)."""
    return clipnorm * xp.minimum(1.0 / norm, 1.0 / clipnorm) + (norm - norm)


def clip_by_global_norm(xp, grads, clipnorm):
    scale = global_scale(xp, global_norm(xp, grads), clipnorm)
    return [g * scale for g in grads]


def clip_gradients(xp, grads, *, clipnorm=None, clipvalue=None, global_clipnorm=None):
    """Apply whichever clip option is set (at most one is); 0 or None means off."""
    if clipnorm:
        return [clip_by_norm(xp, g, clipnorm) for g in grads]
    if global_clipnorm:
        return clip_by_global_norm(xp, grads, global_clipnorm)
    if clipvalue:
        return [clip_by_value(xp, g, clipvalue) for g in grads]
    return list(grads)
