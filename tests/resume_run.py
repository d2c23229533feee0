"""Runs to interrupt and resume, importable by tests and runnable as a fresh process.

``python resume_run.py FACE CASE MODE DIR START STOP`` makes the run's weights and optimizer,
loads ``DIR/at_start.ckpt`` (and for ``MODE`` ``torch`` the ``state_dict``s beside it), trains
from step START to STOP and saves to ``DIR/resumed.ckpt``.

* ``FACE`` ``keras``: ``polyak.SGD`` (training.py's run: a schedule, Nesterov, EMA, accumulation
  over 3, skipped NaN steps), recreated by ``polyak.load(path, variables=...)`` with no
  exclusions of its own; ``CASE`` ``var_list`` / ``var_names`` (how the biases are excluded), or
  ``loss_scale`` (in a ``LossScaleOptimizer``).
* ``FACE`` ``torch``: ``polyak.torch.SGD`` on a small model with a torch scheduler; ``CASE``
  ``steplr`` (two groups, the first layer's bias excluded by ``var_list``) or ``onecycle``
  (OneCycleLR moving the rate and the momentum, EMA, accumulation over 3, the biases excluded
  by ``var_names``). ``MODE`` ``polyak``: ``polyak.load`` into a face made without exclusions;
  ``polyak_again``: into one made with them; ``torch``: torch's ``load_state_dict`` (the face
  made with them, as torch's state_dict holds none).
"""

from __future__ import annotations

import os
import sys

import numpy as np

import polyak
import training

LOSS_SCALE = dict(initial_scale=2.0 ** 10, dynamic_growth_steps=4)


# --- polyak.SGD -------------------------------------------------------------------------------
def keras_run(case, exclude=True):
    """``(optimizer, weights)``: training.py's weights and optimizer, the biases excluded as ``case`` says."""
    weights = training.make_weights()
    if case == "loss_scale":
        inner = polyak.SGD(**dict(training.OPTIONS, skip_nonfinite=False))
        optimizer = polyak.LossScaleOptimizer(inner, **LOSS_SCALE)
    else:
        inner = optimizer = polyak.SGD(**training.OPTIONS)
    if exclude and case == "var_list":
        inner.exclude_from_weight_decay(var_list=[w for w in weights if w.name.endswith("bias")])
    elif exclude:
        inner.exclude_from_weight_decay(var_names=["bias"])
    return optimizer, weights


# --- polyak.torch.SGD -------------------------------------------------------------------------
def torch_run(case, exclude=True):
    """``(model, optimizer, scheduler)`` for ``case``, with the biases excluded when ``exclude``."""
    import torch

    import polyak.torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    named = list(model.named_parameters())
    if case == "steplr":
        opt = polyak.torch.SGD([{"params": named[:2]}, {"params": named[2:], "lr": 0.05}], lr=0.1, momentum=0.9,
                               nesterov=True, weight_decay=0.05)
        if exclude:
            opt.exclude_from_weight_decay(var_list=[model[0].bias])
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    else:
        opt = polyak.torch.SGD(named, lr=0.1, momentum=0.9, weight_decay=0.05, use_ema=True,
                               ema_overwrite_frequency=4, gradient_accumulation_steps=3)
        if exclude:
            opt.exclude_from_weight_decay(var_names=["bias"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=20, cycle_momentum=True,
                                                        base_momentum=0.8, max_momentum=0.95)
    return model, opt, scheduler


def torch_train(model, opt, scheduler, start, stop):
    import torch

    for k in range(start, stop):
        x = torch.linspace(-1, 1, 15).reshape(5, 3) * (1 + k % 4)
        opt.zero_grad()
        (model(x) - 0.5).square().sum().backward()
        opt.step()
        scheduler.step()


def _resume_torch(case, mode, directory, start, stop):
    import torch

    model, opt, scheduler = torch_run(case, exclude=mode != "polyak")
    if mode == "torch":
        saved = torch.load(os.path.join(directory, "at_start.pt"))
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
    else:
        polyak.load(os.path.join(directory, "at_start.ckpt"), opt, variables=list(model.parameters()))
    scheduler.load_state_dict(torch.load(os.path.join(directory, "scheduler.pt")))
    torch_train(model, opt, scheduler, start, stop)
    polyak.save(os.path.join(directory, "resumed.ckpt"), opt, variables=list(model.parameters()))


def main(face, case, mode, directory, start, stop):
    start, stop = int(start), int(stop)
    if face == "torch":
        _resume_torch(case, mode, directory, start, stop)
        return
    weights = training.make_weights()
    optimizer = polyak.load(os.path.join(directory, "at_start.ckpt"), variables=weights)
    training.train(optimizer, weights, start, stop)
    polyak.save(os.path.join(directory, "resumed.ckpt"), optimizer, weights)
    np.save(os.path.join(directory, "resumed_decay_mask.npy"), np.array(optimizer._stepped()._per_weight().decay_mask))


if __name__ == "__main__":
    main(*sys.argv[1:])
