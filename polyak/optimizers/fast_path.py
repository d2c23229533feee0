"""Dispatch from ``Optimizer.apply`` to a backend's fused step, when one applies.

The fused step computes what the reference step computes (see
``polyak.backends.numpy_fused``); this module only decides whether it can run
and prepares it once per set of weights.
"""

from __future__ import annotations

from polyak.backends import NUMPY, numpy_fused
from polyak.core.fused import plan_call
from polyak.optimizers import parameters as params_mod
from polyak.variable import Variable


def _prepare(opt):
    hyper = opt._fused_hyperparameters()
    memory = numpy_fused.memory_for(opt._backend)
    if hyper is None or memory is None or not numpy_fused.available():
        return None
    weights = [params_mod.value_of(v) for v in opt._trainable_variables]
    per_weight = opt._per_weight()
    if per_weight.special or not weights:
        return None
    dtype = memory.dtype_of(weights)
    if dtype is None:
        return None
    slots = opt._slot_variables()
    return numpy_fused.FusedSGD(
        memory,
        dtype,
        opt._trainable_variables,
        weights,
        velocities=slots[0] if slots else [],
        averages=opt._averages,
        accumulators=opt._accumulators,
        decay_mask=per_weight.decay_mask if opt.weight_decay is not None else [False] * len(weights),
    )


def try_apply(opt, variables, grads) -> bool:
    """Run the fused step and return True, or return False having changed nothing."""
    if not opt.fused or opt._fused is False or opt.skip_nonfinite:
        return False
    if variables is not opt._trainable_variables and not all(
        a is b for a, b in zip(variables, opt._trainable_variables)
    ):
        return False
    if len(variables) != len(opt._trainable_variables) or len(grads) != len(variables):
        return False
    if opt._fused is None:
        opt._fused = _prepare(opt) or False
        if opt._fused is False:
            return False
    fused = opt._fused
    if not fused.still_bound():
        return False
    addresses = fused.gradient_addresses(grads)
    if addresses is None:
        return False
    if opt._per_weight().special:
        return False
    plan = opt._plan()
    iteration = NUMPY.to_numpy(opt._iterations.value)
    stored_lr = NUMPY.to_numpy(opt._learning_rate.value) if isinstance(opt._learning_rate, Variable) else None

    def sum_squares(mode):
        return fused.sum_squares(addresses, mode, plan.loss_scale_factor or 0, plan.accumulation_steps or 0)

    with NUMPY.step_context():
        call = plan_call(plan, NUMPY, fused.dtype, iteration, stored_lr, sum_squares)
        momentum, nesterov = opt._fused_hyperparameters()
        fused.run(addresses, call, momentum, nesterov)
    opt._iterations.assign(iteration + 1)
    return True
