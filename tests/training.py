"""A small, deterministic training run: importable by tests, runnable as a fresh process.

``python training.py CHECKPOINT START STOP OUT {given,recreate}`` loads
CHECKPOINT (into an optimizer made by ``make_optimizer``, or one recreated from
the stored config), trains from step START to STOP, and saves to OUT.
"""

from __future__ import annotations

import sys

import numpy as np

import polyak

SHAPES = {"dense_kernel": (3, 4), "dense_bias": (4,), "head_kernel": (4, 2)}
NAN_STEPS = (4, 9)  #: steps whose first gradient holds a NaN (skipped with skip_nonfinite)
OPTIONS = dict(
    learning_rate=polyak.schedules.CosineDecayRestarts(0.1, first_decay_steps=4, t_mul=1.5, m_mul=0.9),
    momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=5.0, use_ema=True, ema_momentum=0.8,
    ema_overwrite_frequency=3, gradient_accumulation_steps=3, skip_nonfinite=True, name="run",
)


def make_weights(dtype="float32"):
    rng = np.random.default_rng(7)
    return [polyak.Variable(rng.normal(size=shape), dtype=dtype, name=name) for name, shape in SHAPES.items()]


def make_optimizer(exclude_bias=True):
    """The run's optimizer; the bias exclusion is not part of a config (as in Keras): a checkpoint
    records it by name, and an optimizer recreated from one gets it back."""
    optimizer = polyak.SGD(**OPTIONS)
    if exclude_bias:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def gradients(step, weights):
    """``2 (w - target)`` plus step-seeded noise: depends on the weights, as a real loss does."""
    rng = np.random.default_rng(1000 + step)
    grads = [2 * (w.numpy() - 1.0) + rng.normal(scale=0.5, size=w.shape).astype(w.dtype) for w in weights]
    if step in NAN_STEPS:
        grads[0][0, 0] = np.nan
    return grads


def train(optimizer, weights, start, stop):
    for step in range(start, stop):
        optimizer.apply(gradients(step, weights), weights)


def main(checkpoint, start, stop, out, mode):
    weights = make_weights()
    optimizer = polyak.load(checkpoint, make_optimizer() if mode == "given" else None, weights)
    train(optimizer, weights, int(start), int(stop))
    polyak.save(out, optimizer, weights)


if __name__ == "__main__":
    main(*sys.argv[1:])
