"""The demo's MLP on JAX: the same layers and initial weights as :mod:`polyak.demo.mlp`,
gradients from ``jax.grad``, and the optimizer step ``jax.jit(opt.stateless_apply)``.

The weights are ``polyak.Variable``s holding JAX arrays (so ``opt.ema_weights``, the
checkpoint and weight decay's exclusion of biases by name work as on NumPy); each
step runs two compiled functions, the loss and its gradients, then polyak's pure
update, and rebinds the weights and the optimizer's variables to the new arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import polyak
from polyak.demo.mlp import check_state, initial_weights, layer_sizes


def _logits(values, x):
    h = x
    for layer in range(0, len(values), 2):
        h = h @ values[layer] + values[layer + 1]
        if layer + 2 < len(values):
            h = jax.nn.relu(h)
    return h


def _loss(values, x, y):
    """The mean cross-entropy and, as auxiliary output, the number of correct predictions."""
    logits = _logits(values, x)
    losses = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return losses.mean(), jnp.sum(logits.argmax(axis=1) == y)


@jax.jit
def _scores(values, x, y):
    loss, correct = _loss(values, x, y)
    return loss, correct / y.shape[0]


_loss_and_grads = jax.jit(jax.value_and_grad(_loss, has_aux=True))


class JaxMLP:
    """The MLP's weights as ``polyak.Variable``s holding JAX arrays."""

    def __init__(self, hidden, seed):
        self.sizes = layer_sizes(hidden)
        self.weights = [polyak.Variable(jnp.asarray(value), name=name)
                        for name, value in initial_weights(self.sizes, seed).items()]
        self._update = None
        self._data = {}

    @property
    def parameter_count(self) -> int:
        return sum(int(np.prod(w.shape)) for w in self.weights)

    def loss_and_grads(self, x, y):
        """``(mean loss, correct predictions, gradients aligned with self.weights)`` on a batch."""
        (loss, correct), grads = _loss_and_grads([w.value for w in self.weights], x, y.astype(np.int32))
        return float(loss), int(correct), grads

    def apply_gradients(self, opt, grads) -> None:
        """One optimizer step, compiled: ``opt.stateless_apply`` under ``jax.jit``, traced once."""
        if self._update is None:
            self._update = jax.jit(opt.stateless_apply)
        params, values = self._update([v.value for v in opt.variables], grads, [w.value for w in self.weights])
        for w, value in zip(self.weights, params):
            w.assign(value)
        for v, value in zip(opt.variables, values):
            v.assign(value)

    def evaluate(self, x, y):
        """``(mean loss, accuracy)`` of the current weights on ``x``, ``y``."""
        key = (id(x), id(y))
        if key not in self._data:  # the evaluation sets, on the device once
            self._data[key] = (x, y, jnp.asarray(x), jnp.asarray(y.astype(np.int32)))
        _, _, x_device, y_device = self._data[key]
        loss, accuracy = _scores([w.value for w in self.weights], x_device, y_device)
        return float(loss), float(accuracy)

    def state(self) -> dict[str, np.ndarray]:
        return {w.name: w.numpy() for w in self.weights}

    def load_state(self, arrays: dict) -> None:
        """Set every weight from ``arrays`` (name -> array) after checking all names and shapes."""
        check_state({w.name: w.shape for w in self.weights}, arrays)
        for w in self.weights:
            w.assign(jnp.asarray(np.asarray(arrays[w.name], dtype=np.float32)))
