"""Learning-rate schedules as pure functions of the step, in float32.

Each function reproduces Keras 3's arithmetic operation for operation (the same
float32 roundings in the same order), so a schedule's values match Keras's bit
for bit on NumPy. ``xp`` is the array namespace of the step, so the same code
runs eagerly on NumPy and PyTorch and traced under ``jax.jit``.
"""

from __future__ import annotations

import math


def _f32(xp, value):
    return xp.asarray(value, dtype=xp.float32)


def _step(xp, step):
    return xp.astype(xp.asarray(step), xp.float32)


def exponential_decay(xp, step, initial_learning_rate, decay_steps, decay_rate, staircase):
    """``lr0 * decay_rate ** (step / decay_steps)``; the exponent floored if ``staircase``."""
    p = _step(xp, step) / _f32(xp, decay_steps)
    if staircase:
        p = xp.floor(p)
    return _f32(xp, initial_learning_rate) * xp.pow(_f32(xp, decay_rate), p)


def piecewise_constant(xp, step, boundaries, values):
    """``values[i]`` on the ``i``-th interval ``(boundaries[i-1], boundaries[i]]``."""
    step = xp.asarray(step)
    bounds = [xp.astype(xp.asarray(b), step.dtype) for b in boundaries]
    vals = [_f32(xp, v) for v in values]
    result = _f32(xp, 0) + xp.astype(step <= bounds[0], xp.float32) * vals[0]
    result = result + xp.astype(step > bounds[-1], xp.float32) * vals[-1]
    for low, high, value in zip(bounds[:-1], bounds[1:], vals[1:-1]):
        result = result + xp.astype((step > low) & (step <= high), xp.float32) * value
    return result


def polynomial_decay(xp, step, initial_learning_rate, decay_steps, end_learning_rate, power, cycle):
    """``(lr0 - end) * (1 - step / decay_steps) ** power + end``, step clipped or cycled."""
    lr0 = _f32(xp, initial_learning_rate)
    end = _f32(xp, end_learning_rate)
    s = _step(xp, step)
    steps = _f32(xp, decay_steps)
    if cycle:
        multiplier = xp.where(s == 0, _f32(xp, 1.0), xp.ceil(s / decay_steps))
        steps = steps * multiplier
    else:
        s = xp.minimum(s, steps)
    p = s / steps
    return (lr0 - end) * xp.pow(1 - p, _f32(xp, power)) + end


def inverse_time_decay(xp, step, initial_learning_rate, decay_steps, decay_rate, staircase):
    """``lr0 / (1 + decay_rate * step / decay_steps)``; the ratio floored if ``staircase``."""
    p = _step(xp, step) / _f32(xp, decay_steps)
    if staircase:
        p = xp.floor(p)
    return _f32(xp, initial_learning_rate) / (_f32(xp, 1) + _f32(xp, decay_rate) * p)


def _cosine(xp, step, decay_steps, decay_from, alpha):
    fraction = step / decay_steps
    cosine = 0.5 * (1.0 + xp.cos(_f32(xp, math.pi) * fraction))
    return decay_from * ((1 - alpha) * cosine + alpha)


def cosine_decay(xp, step, initial_learning_rate, decay_steps, alpha, warmup_target, warmup_steps):
    """Linear warmup ``lr0 -> warmup_target`` over ``warmup_steps``, then
    ``peak * ((1 - alpha) * 0.5 * (1 + cos(pi * t / decay_steps)) + alpha)``."""
    lr0 = _f32(xp, initial_learning_rate)
    steps = _f32(xp, decay_steps)
    s = _step(xp, step)
    if warmup_target is None:
        return _cosine(xp, xp.minimum(s, steps), steps, lr0, alpha)
    target = _f32(xp, warmup_target)
    warmup = _f32(xp, warmup_steps)
    s = xp.minimum(s, steps + warmup)
    warming = (target - lr0) * (s / warmup) + lr0
    decaying = _cosine(xp, s - warmup, steps, target, alpha)
    return xp.where(s < warmup, warming, decaying)


def cosine_decay_restarts(xp, step, initial_learning_rate, first_decay_steps, t_mul, m_mul, alpha):
    """SGDR: cosine periods of ``first_decay_steps * t_mul**i`` steps, peaks ``lr0 * m_mul**i``."""
    first = _f32(xp, first_decay_steps)
    alpha_ = _f32(xp, alpha)
    t_mul_ = _f32(xp, t_mul)
    fraction = _step(xp, step) / first
    if t_mul == 1.0:
        restart = xp.floor(fraction)
        fraction = fraction - restart
    else:
        restart = xp.floor(xp.log(1.0 - fraction * (1.0 - t_mul_)) / xp.log(t_mul_))
        total = (1.0 - xp.pow(t_mul_, restart)) / (1.0 - t_mul_)
        fraction = (fraction - total) / xp.pow(t_mul_, restart)
    factor = xp.pow(_f32(xp, m_mul), restart)
    cosine = 0.5 * factor * (1.0 + xp.cos(_f32(xp, math.pi) * fraction))
    return _f32(xp, initial_learning_rate) * ((1 - alpha_) * cosine + alpha_)
