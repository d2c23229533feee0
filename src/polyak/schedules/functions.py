"""Learning-rate schedules as pure functions of the step, in float32.

Each function reproduces Keras 3's arithmetic operation for operation (the same
float32 roundings in the same order), so a schedule's values match Keras's bit
for bit on NumPy. ``xp`` is the array namespace of the step, so the same code
runs eagerly on NumPy and PyTorch and traced under ``jax.jit``.

Every float32 constant is a 0-d array made where the step lives (``xp.full``: on a torch
device, without a copy from the host), and every division is by such an array: on CUDA,
PyTorch divides by a Python number or a CPU scalar as a multiplication by its reciprocal
(up to 1 ulp from NumPy's quotient), by a 0-d tensor of the same device truly. Constants
met only in ``+``, ``-``, ``*`` stay Python numbers: float32 arithmetic rounds them as NumPy does.
"""

from __future__ import annotations

import math

from polyak.backends.kinds import kind_of


def _f32(xp, value, like):
    """``value`` as a float32 0-d array on the device of the array ``like`` (torch) or the default one."""
    return xp.full((), value, dtype=xp.float32, device=like.device if kind_of(like) == "torch" else None)


def _step(xp, step):
    return xp.astype(xp.asarray(step), xp.float32)


def exponential_decay(xp, step, initial_learning_rate, decay_steps, decay_rate, staircase):
    """``lr0 * decay_rate ** (step / decay_steps)``; the exponent floored if ``staircase``."""
    s = _step(xp, step)
    p = s / _f32(xp, decay_steps, s)
    if staircase:
        p = xp.floor(p)
    return _f32(xp, initial_learning_rate, s) * xp.pow(_f32(xp, decay_rate, s), p)


def piecewise_constant(xp, step, boundaries, values):
    """``values[i]`` on the ``i``-th interval ``(boundaries[i-1], boundaries[i]]``."""
    step = xp.asarray(step)
    bounds = [xp.astype(xp.asarray(b), step.dtype) for b in boundaries]
    vals = [_f32(xp, v, step) for v in values]
    result = _f32(xp, 0, step) + xp.astype(step <= bounds[0], xp.float32) * vals[0]
    result = result + xp.astype(step > bounds[-1], xp.float32) * vals[-1]
    for low, high, value in zip(bounds[:-1], bounds[1:], vals[1:-1]):
        result = result + xp.astype((step > low) & (step <= high), xp.float32) * value
    return result


def polynomial_decay(xp, step, initial_learning_rate, decay_steps, end_learning_rate, power, cycle):
    """``(lr0 - end) * (1 - step / decay_steps) ** power + end``, step clipped or cycled."""
    s = _step(xp, step)
    lr0 = _f32(xp, initial_learning_rate, s)
    end = _f32(xp, end_learning_rate, s)
    steps = _f32(xp, decay_steps, s)
    if cycle:
        multiplier = xp.where(s == 0, _f32(xp, 1.0, s), xp.ceil(s / steps))
        steps = steps * multiplier
    else:
        s = xp.minimum(s, steps)
    p = s / steps
    return (lr0 - end) * xp.pow(1 - p, _f32(xp, power, s)) + end


def inverse_time_decay(xp, step, initial_learning_rate, decay_steps, decay_rate, staircase):
    """``lr0 / (1 + decay_rate * step / decay_steps)``; the ratio floored if ``staircase``."""
    s = _step(xp, step)
    p = s / _f32(xp, decay_steps, s)
    if staircase:
        p = xp.floor(p)
    return _f32(xp, initial_learning_rate, s) / (_f32(xp, 1, s) + _f32(xp, decay_rate, s) * p)


def _cosine(xp, step, decay_steps, decay_from, alpha):
    fraction = step / decay_steps
    cosine = 0.5 * (1.0 + xp.cos(_f32(xp, math.pi, step) * fraction))
    return decay_from * ((1 - alpha) * cosine + alpha)


def cosine_decay(xp, step, initial_learning_rate, decay_steps, alpha, warmup_target, warmup_steps):
    """Linear warmup ``lr0 -> warmup_target`` over ``warmup_steps``, then
    ``peak * ((1 - alpha) * 0.5 * (1 + cos(pi * t / decay_steps)) + alpha)``."""
    s = _step(xp, step)
    lr0 = _f32(xp, initial_learning_rate, s)
    steps = _f32(xp, decay_steps, s)
    if warmup_target is None:
        return _cosine(xp, xp.minimum(s, steps), steps, lr0, alpha)
    target = _f32(xp, warmup_target, s)
    warmup = _f32(xp, warmup_steps, s)
    s = xp.minimum(s, steps + warmup)
    warming = (target - lr0) * (s / warmup) + lr0
    decaying = _cosine(xp, s - warmup, steps, target, alpha)
    return xp.where(s < warmup, warming, decaying)


def cosine_decay_restarts(xp, step, initial_learning_rate, first_decay_steps, t_mul, m_mul, alpha):
    """SGDR: cosine periods of ``first_decay_steps * t_mul**i`` steps, peaks ``lr0 * m_mul**i``."""
    s = _step(xp, step)
    first = _f32(xp, first_decay_steps, s)
    alpha_ = _f32(xp, alpha, s)
    t_mul_ = _f32(xp, t_mul, s)
    fraction = s / first
    if t_mul == 1.0:
        restart = xp.floor(fraction)
        fraction = fraction - restart
    else:
        restart = xp.floor(xp.log(1.0 - fraction * (1.0 - t_mul_)) / xp.log(t_mul_))
        total = (1.0 - xp.pow(t_mul_, restart)) / (1.0 - t_mul_)
        fraction = (fraction - total) / xp.pow(t_mul_, restart)
    factor = xp.pow(_f32(xp, m_mul, s), restart)
    cosine = 0.5 * factor * (1.0 + xp.cos(_f32(xp, math.pi, s) * fraction))
    return _f32(xp, initial_learning_rate, s) * ((1 - alpha_) * cosine + alpha_)
