"""How far a contender's repeats spread, and when that makes its median noise.

The spread is the interquartile range of the repeats over their median. One
slow repeat in fifteen moves neither quartile, so it raises no warning; a
machine busy for half the run moves the upper quartile, and the median reported
is then as much the load's as the step's.
"""

from __future__ import annotations

import statistics

#: A spread above this (the middle half of the repeats wider than a fifth of the
#: median) makes the median unreliable as a step time.
NOISY = 0.2


def spread(samples) -> float:
    """``(q3 - q1) / median`` of ``samples``; 0.0 for fewer than two."""
    if len(samples) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(samples)


def noisy(times: dict, threshold: float = NOISY) -> dict:
    """The contenders of ``times`` (name -> repeat times) whose spread exceeds ``threshold``,
    with that spread."""
    spreads = {name: spread(samples) for name, samples in times.items()}
    return {name: value for name, value in spreads.items() if value > threshold}


def warning(name: str, low_ms: float, high_ms: float, value: float, threshold: float = NOISY) -> str:
    """The line that says a contender's median is noise: its range of repeat times and its spread."""
    return (f"  warning: {name}: its repeats ranged over {low_ms:.2f}-{high_ms:.2f} ms, an interquartile range "
            f"of {value:.0%} of the median (over {threshold:.0%}): the median is noise; rerun with more "
            "--repeats or on a quieter machine")
