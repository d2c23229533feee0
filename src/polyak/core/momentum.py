"""The SGD update rule with heavy-ball or Nesterov momentum, in Keras's convention.

With ``momentum == 0``::

    w <- w - lr * g

otherwise, with velocity ``v`` (zero at the start)::

    v <- momentum * v - lr * g
    w <- w + v                          (heavy ball)
    w <- w + momentum * v - lr * g      (Nesterov)

The velocity carries the learning rate inside it (unlike ``torch.optim.SGD``,
whose buffer is ``momentum * b + g`` and is scaled by lr afterwards), so a
learning-rate change takes effect through new gradients only.
"""

from __future__ import annotations


def sgd_update(bk, grads, params, velocities, learning_rate, momentum, nesterov):
    """One step on lists of tensors. ``velocities`` is ``None`` when ``momentum == 0``.

    Returns ``(new_params, new_velocities)``; learning rate, momentum and
    gradients are cast to each weight's dtype first, as Keras does.
    """
    new_params, new_velocities = [], []
    for i, (g, w) in enumerate(zip(grads, params)):
        lr = bk.cast(learning_rate, w.dtype)
        g = bk.cast(g, w.dtype)
        if velocities is None:
            new_params.append(w - g * lr)
            continue
        m = bk.scalar(momentum, w.dtype)
        v = velocities[i] * m - g * lr
        new_velocities.append(v)
        new_params.append(w + (v * m - g * lr) if nesterov else bk.add(w, v))
    return new_params, (None if velocities is None else new_velocities)


class MomentumRule:
    """SGD's rule as the step calls it: ``rule(bk, grads, params, slots, lr)``, and per
    element for the fused kernels.

    The per-element form uses ``x`` (the gradient, already transformed by the
    stages before the rule), ``wv`` (the weight), ``lr``, ``{momentum}`` (the
    element of the slot of that name) and the scalars of :meth:`kernel_scalars`;
    it performs the same operations, in the same order and dtype, as
    :func:`sgd_update`.
    """

    def __init__(self, momentum, nesterov):
        self.momentum = momentum
        self.nesterov = nesterov
        #: the optimizer variables the rule keeps per weight, by name
        self.slot_names = ("momentum",) if momentum != 0 else ()

    def __call__(self, bk, grads, params, slots, learning_rate):
        velocities = slots[0] if slots else None
        new_params, new_velocities = sgd_update(bk, grads, params, velocities, learning_rate, self.momentum,
                                                self.nesterov)
        return new_params, (() if new_velocities is None else (new_velocities,))

    def kernel_key(self):
        """What selects the compiled kernel: the lines depend on these only."""
        return ("momentum", self.momentum != 0, bool(self.nesterov))

    def kernel_lines(self):
        if self.momentum == 0:
            return ("wv = wv - x * lr",)
        lines = ("v = {momentum} * momentum - x * lr", "{momentum} = v")
        return lines + (("wv = wv + (v * momentum - x * lr)",) if self.nesterov else ("wv = wv + v",))

    def kernel_scalars(self):
        return {"momentum": self.momentum}
