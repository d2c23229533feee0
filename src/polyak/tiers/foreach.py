"""The foreach tier: PyTorch tensors off the CPU that the Triton tier cannot take, and DTensors
(FSDP2's parameters), a few multi-tensor ``torch._foreach_*`` operations per stage.

This is a third dialect of the stages' statements (:class:`~polyak.core.stages.KernelCall`):
instead of compiling them, it evaluates each one over whole lists of tensors, one
multi-tensor operation per arithmetic operation (``a * b`` is ``torch._foreach_mul(a, b)``,
with a scalar of the weights' dtype or a per-tensor list of them where the statement has one),
then writes back, with one ``torch._foreach_copy_`` each, the weights and every state role the
statements assigned (DTensors shard by shard, :mod:`polyak.tiers.dtensors`). The operations
are the reference step's, in its order and dtype, so the numbers are the reference's. Weights
and state stay the tensors they are (a tensor subclass such as DTensor runs its own foreach
operations); nothing is packed.

Nothing is read back from the device (on CUDA, no synchronisation): the decisions take the
optimizer's host copy of the iteration count; a scalar known on the host (a hyperparameter, a
schedule's rate) is passed as a number; one that lives on the device (the stored rate, the
global clipping factor, the per-tensor norms of the norm pass) stays there, a 0-d tensor of the
weights' dtype. A division is ``_foreach_div`` by a number or such a tensor: true division, as
the reference's (which divides by a 0-d array), never a multiplication by a reciprocal.

Takes a step when: every weight is a float32 or float64 tensor of one dtype on one device other
than the CPU, or every weight is a DTensor (on the CPU too: on 2 gloo processes, a 2.1M-parameter
FSDP2 model of 16 tensors took 102 ms per step here against the reference tier's 167 ms), or
``POLYAK_TIER=foreach`` (see :mod:`polyak.tiers`) asks for it on the CPU; every stage
can be fused for the plan; every weight is stepped and every gradient is a tensor of its
weight's dtype and shape. A guarded step (``skip_nonfinite``, a ``LossScaleOptimizer``: see
:mod:`polyak.tiers.guards`) reads its flag back from the device, one synchronisation per step
(the writes are not gated on the device), and is not taken on meta tensors, which hold no value.
"""

from __future__ import annotations

import ast
import operator

import numpy as np

from polyak.core import nonfinite, stages
from polyak.optimizers import parameters as params_mod
from polyak.optimizers.state_roles import MASTER
from polyak.tiers import calls

_ZERO = "zero"  #: the value of a statement that sets a role to the constant 0


def _torch():
    import torch

    return torch


class PerTensor(tuple):
    """One scalar per tensor (a statement's ``{denominator}``): 0-d tensors on the device."""


def _local(role):
    return f"{role}_"


class Evaluator:
    """Evaluates stage statements over lists of tensors; ``env`` maps each name to a list of
    tensors (a ``list``: what foreach operations return is made one), a :class:`PerTensor`
    or a scalar of the weights' dtype."""

    _OPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}
    _SCALAR_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}

    def __init__(self, env):
        self.env = dict(env)

    def run(self, statement, roles, where=None):
        """Assign the statement's value; ``where``: the tensor indices it applies to (else all)."""
        tree = ast.parse(statement.format(denominator="denominator", **{r: _local(r) for r in roles}))
        assign = tree.body[0]
        if len(tree.body) != 1 or not isinstance(assign, ast.Assign) or not isinstance(assign.targets[0], ast.Name):
            raise ValueError(f"A stage statement must be one assignment `name = expression`. Received: {statement!r}")
        target = assign.targets[0].id
        if isinstance(assign.value, ast.Constant):
            if assign.value.value != 0:
                raise ValueError(f"A stage statement may set only the constant 0. Received: {statement!r}")
            self.env[target] = _ZERO
            return
        if where is None:
            self.env[target] = self.value(assign.value, self.env)
            return
        subset = {k: [v[i] for i in where] if isinstance(v, (list, PerTensor)) else v for k, v in self.env.items()}
        merged = list(self.env[target])
        for i, value in zip(where, self.value(assign.value, subset)):
            merged[i] = value
        self.env[target] = merged

    def value(self, node, env):
        torch = _torch()
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = self.value(node.operand, env)
            return list(torch._foreach_neg(operand)) if isinstance(operand, list) else -operand
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "clip":
            x, lo, hi = (self.value(a, env) for a in node.args)
            return list(torch._foreach_clamp_max(torch._foreach_clamp_min(x, float(lo)), float(hi)))
        if isinstance(node, ast.BinOp) and type(node.op) in self._OPS:
            return self._binary(self._OPS[type(node.op)], self.value(node.left, env), self.value(node.right, env))
        raise ValueError(f"A stage statement may not use {ast.unparse(node)!r}")

    @staticmethod
    def _binary(name, a, b):
        torch = _torch()
        if not isinstance(a, list) and not isinstance(b, list):  # two scalars of the weights' dtype
            return Evaluator._SCALAR_OPS[name](a, b)
        if not isinstance(a, list):  # a scalar on the left: s + x = x + s, s * x = x * s, s - x = -x + s
            if name in ("add", "mul"):
                a, b = b, a
            elif name == "sub":
                a, b, name = list(torch._foreach_neg(b)), a, "add"
            else:
                raise ValueError("A stage statement may not divide a scalar by a tensor")
        if isinstance(b, list):
            return list(getattr(torch, f"_foreach_{name}")(a, b))
        if isinstance(b, PerTensor):
            return list(getattr(torch, f"_foreach_{name}")(a, list(b)))
        if not isinstance(b, torch.Tensor):  # a number: exact as a Python float
            return list(getattr(torch, f"_foreach_{name}")(a, float(b)))
        if name == "sub":  # no tensor overload of _foreach_sub: x - s = x + (-1) * s, rounded once
            return list(torch.ops.aten._foreach_add.Tensor(a, b, alpha=-1))
        return list(getattr(torch.ops.aten, f"_foreach_{name}").Tensor(a, b))


class ForeachStep:
    """One step's lists: weights, gradients and state by role; runs the call's statements."""

    def __init__(self, weights, grads, roles, decaying):
        self.weights, self.grads, self.roles = weights, grads, roles
        self.decaying = decaying  #: indices of the weights subject to decay

    def _env(self, call):
        env = {"x": self.grads, "wv": self.weights, **call.scalars}
        env.update({_local(role): tensors for role, tensors in self.roles.items()})
        if call.denominators is not None:
            env["denominator"] = PerTensor(call.denominators.unbind())
        return env

    def sum_squares(self, call):
        """Per tensor, the float64 sum of squares of the gradient after ``call``'s gradient
        statements, over the full tensors (DTensors: summed over their shards): one float64
        tensor on the device."""
        from polyak.tiers import dtensors  # imports torch: only once torch tensors are stepped

        evaluator = Evaluator(self._env(call))
        for statement in call.gradient_statements():
            evaluator.run(statement, call.roles)
        return dtensors.sums_of_squares(list(evaluator.env["x"]))

    def run(self, call):
        from polyak.tiers import dtensors

        torch = _torch()
        evaluator = Evaluator(self._env(call))
        for kind, statement in call.body:
            if kind != "decayed":
                evaluator.run(statement, call.roles)
            elif self.decaying:
                evaluator.run(statement, call.roles, where=self.decaying)
        targets = [("wv", self.weights)] + [(_local(role), tensors) for role, tensors in self.roles.items()]
        for name, tensors in targets:
            new = evaluator.env[name]
            if new is _ZERO:
                torch._foreach_zero_(tensors)
            elif new is not tensors:
                dtensors.copy_(tensors, new)


def _dtype(values):
    torch = _torch()
    dtype = values[0].dtype
    ok = dtype in (torch.float32, torch.float64) and all(
        isinstance(v, torch.Tensor) and v.dtype is dtype and v.layout == torch.strided for v in values)
    return dtype if ok else None


def _is_dtensor(tensor):
    from polyak.tiers import dtensors

    dtensor = dtensors.dtensor_class()
    return dtensor is not None and isinstance(tensor, dtensor)


def can_take(optimizer, plan, variables, grads, forced=False) -> bool:
    """Whether this tier can run the (validated) step; ``forced``: asked for by
    ``POLYAK_TIER=foreach``, which lets CPU tensors in."""
    backend = optimizer._backend
    if backend.name != "torch":
        return False
    built = optimizer._trainable_variables
    weights = [params_mod.value_of(v) for v in built]
    if backend.device.type == "cpu" and not forced and not (weights and all(_is_dtensor(w) for w in weights)):
        return False
    if not params_mod.are_the_built(variables, built):
        return False
    if not stages.fusable(plan) or (plan.skip_nonfinite and backend.device.type == "meta"):
        return False  # a guarded step reads its flag back: a meta tensor has none
    dtype = _dtype(weights) if weights else None
    return dtype is not None and len(grads) == len(weights) and all(
        g is not None and _dtype([g]) is dtype and g.shape == w.shape for g, w in zip(grads, weights))


class ForeachTier:
    name = "foreach"

    @staticmethod
    def _step(optimizer, plan, grads):
        weights = [params_mod.value_of(v) for v in optimizer._trainable_variables]
        roles = {role: [v.value for v in group] for role, group in optimizer.state_roles.per_weight
                 if role != MASTER}
        decaying = [i for i, d in enumerate(plan.decay_mask) if d] if plan.weight_decay is not None else []
        return ForeachStep(weights, list(grads), roles, decaying)

    def run(self, optimizer, plan, indices, grads, proof=None) -> str:
        return self.run_guarded(optimizer, plan, indices, grads, proof)[0]

    def run_guarded(self, optimizer, plan, indices, grads, proof=None):
        """One step, and whether it ran: ``(name, finite)``, ``finite`` False when a guarded
        plan's flag skips it (made on the device, then read back: one synchronisation, the
        writes are not gated on the device here; see ``guards``)."""
        step = self._step(optimizer, plan, grads)
        call = calls.device_call(optimizer, plan, step.weights[0].dtype, step.sum_squares)
        with np.errstate(all="ignore"), optimizer._backend.step_context():
            stages.kernel_call(plan, call)
            if not bool(nonfinite.flag(plan, call.xp, call.checked)):
                return self.name, False
            step.run(call)
        optimizer._iterations.advance()
        return self.name, True


TIER = ForeachTier()
