"""Polyak iterate averaging: an exponential moving average of the weights.

On the first update the average is a copy of the weights; afterwards
``avg <- m * avg + (1 - m) * w``. Every ``overwrite_frequency`` updates the
weights are replaced by their averages.
"""

from __future__ import annotations


def update_averages(bk, averages, params, iterations, momentum):
    """New averages; ``iterations`` counts completed updates (0 on the first)."""
    out = []
    for avg, w in zip(averages, params):
        if avg is None:
            out.append(None)
            continue
        m = bk.cast(iterations != 0, w.dtype) * bk.scalar(momentum, w.dtype)
        out.append(bk.cast(m * avg + (1 - m) * w, avg.dtype))
    return out


def overwrite_with_averages(bk, params, averages, iterations, frequency):
    """``params`` replaced by ``averages`` when ``(iterations + 1) % frequency == 0``."""
    return bk.cond(
        (iterations + 1) % frequency == 0,
        lambda: [w if avg is None else bk.cast(avg, w.dtype) for w, avg in zip(params, averages)],
        lambda: list(params),
    )
