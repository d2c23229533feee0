"""Decoupled weight decay: ``w <- w - w * weight_decay * lr`` before the update."""

from __future__ import annotations


def decay_weights(bk, params, mask, weight_decay, learning_rate):
    """Shrink every ``params[i]`` with ``mask[i]`` true; lr and decay cast to its dtype."""
    out = []
    for w, use in zip(params, mask):
        if use:
            lr = bk.cast(learning_rate, w.dtype)
            wd = bk.scalar(weight_decay, w.dtype)
            w = w - w * wd * lr
        out.append(w)
    return out
