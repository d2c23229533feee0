"""Gradient clipping, exactly as Keras 3 computes it.

* ``clip_by_norm``: ``g * c / max(||g||, c)`` per tensor.
* ``clip_by_value``: ``clip(g, -c, c)`` elementwise.
* global clipping (``clip_gradients(global_clipnorm=c)``): every ``g * c * min(1 / N, 1 / c)`` with ``N`` the
  norm of all gradients together; a non-finite ``N`` turns every gradient into
  NaN (Keras's ``+ (N - N)``), so a poisoned step is visible, not silent.
"""

from __future__ import annotations

from polyak.core.state import LOCAL_SQUARES


def norm_from_squares(xp, squares):
    """``sqrt(squares)``, taken only where ``squares > 0`` (0 and NaN stay as they are)."""
    positive = squares > 0
    return xp.where(positive, xp.sqrt(xp.where(positive, squares, xp.ones_like(squares))), squares)


def clip_by_norm(xp, g, clipnorm, squares=None, norm=None):
    """``g * c / max(||g||, c)``; ``squares`` is ``sum(g ** 2)`` with kept dims when already
    known, ``norm`` the norm made of them."""
    if norm is None:
        norm = norm_from_squares(xp, xp.sum(xp.square(g), keepdims=True) if squares is None else squares)
    return (g * clipnorm) / xp.maximum(norm, clipnorm)


def clip_by_value(xp, g, clipvalue):
    return xp.clip(g, -clipvalue, clipvalue)


def global_norm(xp, grads, squares=LOCAL_SQUARES):
    """``sqrt(sum over tensors of sum(g ** 2))``, summed per tensor first as Keras does."""
    return xp.sqrt(squares.total(xp, [xp.sum(xp.square(g)) for g in grads]))


def global_scale(xp, norm, clipnorm):
    """The factor every gradient is multiplied by (NaN when ``norm`` is not finite)."""
    return clipnorm * xp.minimum(1.0 / norm, 1.0 / clipnorm) + (norm - norm)


def clip_gradients(xp, grads, *, clipnorm=None, clipvalue=None, global_clipnorm=None, squares=LOCAL_SQUARES):
    """Apply whichever clip option is set (at most one is); 0 or None means off. ``squares``
    sums the squares into norms (over the ranks, for sharded state)."""
    return clip_with_norms(xp, grads, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                           squares=squares)[0]


def clip_with_norms(xp, grads, *, clipnorm=None, clipvalue=None, global_clipnorm=None, squares=LOCAL_SQUARES):
    """``(clipped gradients, the norms clipping computed)``: per tensor for ``clipnorm``, the
    global norm (one 0-d array) for ``global_clipnorm``, none otherwise."""
    if clipnorm:
        sums = squares.per_tensor(xp, [xp.sum(xp.square(g), keepdims=True) for g in grads])
        norms = [norm_from_squares(xp, s) for s in sums]
        return [clip_by_norm(xp, g, clipnorm, norm=n) for g, n in zip(grads, norms)], norms
    if global_clipnorm:
        norm = global_norm(xp, grads, squares)
        scale = global_scale(xp, norm, global_clipnorm)
        return [g * scale for g in grads], [norm]
    if clipvalue:
        return [clip_by_value(xp, g, clipvalue) for g in grads], []
    return list(grads), []
