"""The model: a multilayer perceptron whose forward and backward passes are NumPy.

With ``h_0 = x`` and layers ``l = 1..L``::

    z_l = h_{l-1} @ W_l + b_l,    h_l = relu(z_l) for l < L,    logits = z_L
    loss = mean_i ( logsumexp(z_L[i]) - z_L[i, y_i] )

and backwards, with ``p = softmax(z_L)`` and ``n`` examples::

    dz_L = (p - onehot(y)) / n
    dW_l = h_{l-1}^T @ dz_l,    db_l = sum_i dz_l[i]
    dz_{l-1} = (dz_l @ W_l^T) * (z_{l-1} > 0)
"""

from __future__ import annotations

import numpy as np

import polyak
from polyak.demo.errors import DemoError

INPUTS = 64
CLASSES = 10


def layer_sizes(hidden) -> list[int]:
    return [INPUTS, *hidden, CLASSES]


def initial_weights(sizes, seed) -> dict[str, np.ndarray]:
    """He-normal kernels ``N(0, 2 / fan_in)`` and zero biases, float32, named
    ``dense_{l}_kernel`` and ``dense_{l}_bias`` (the names the weight decay excludes by)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
        weights[f"dense_{layer}_kernel"] = kernel.astype(np.float32)
        weights[f"dense_{layer}_bias"] = np.zeros(fan_out, np.float32)
    return weights


def _forward(values, x):
    """The logits and every layer's pre-activation ``z_l`` and input ``h_{l-1}``."""
    inputs, pre_activations = [], []
    h = x
    for layer in range(0, len(values), 2):
        inputs.append(h)
        z = h @ values[layer] + values[layer + 1]
        pre_activations.append(z)
        h = np.maximum(z, 0) if layer + 2 < len(values) else z
    return h, inputs, pre_activations


def _cross_entropy(logits, y):
    """Per-example ``logsumexp(z) - z[y]`` and ``softmax(z)``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    losses = np.log(total[:, 0]) - shifted[np.arange(len(y)), y]
    return losses, exp / total


class NumpyMLP:
    """The MLP's weights as ``polyak.Variable``s, with the passes above."""

    def __init__(self, hidden, seed):
        self.sizes = layer_sizes(hidden)
        self.weights = [polyak.Variable(value, name=name) for name, value in initial_weights(self.sizes, seed).items()]

    @property
    def parameter_count(self) -> int:
        return sum(int(np.prod(w.shape)) for w in self.weights)

    def loss_and_grads(self, x, y):
        """``(mean loss, correct predictions, gradients aligned with self.weights)`` on a batch."""
        values = [w.value for w in self.weights]
        logits, inputs, pre_activations = _forward(values, x)
        losses, probabilities = _cross_entropy(logits, y)
        dz = probabilities
        dz[np.arange(len(y)), y] -= 1
        dz /= len(y)
        grads = [None] * len(values)
        for layer in reversed(range(0, len(values), 2)):
            grads[layer] = inputs[layer // 2].T @ dz
            grads[layer + 1] = dz.sum(axis=0)
            if layer:
                dz = (dz @ values[layer].T) * (pre_activations[layer // 2 - 1] > 0)
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        return float(losses.mean()), correct, grads

    def evaluate(self, x, y):
        """``(mean loss, accuracy)`` of the current weights on ``x``, ``y``."""
        logits, _, _ = _forward([w.value for w in self.weights], x)
        losses, _ = _cross_entropy(logits, y)
        return float(losses.mean()), float(np.mean(logits.argmax(axis=1) == y))

    def state(self) -> dict[str, np.ndarray]:
        return {w.name: w.numpy() for w in self.weights}

    def apply_gradients(self, opt, grads) -> None:
        """One optimizer step: the weights are Variables, assigned in place."""
        opt.apply(grads, self.weights)

    def load_state(self, arrays: dict) -> None:
        """Set every weight from ``arrays`` (name -> array) after checking all names and shapes."""
        check_state({w.name: w.shape for w in self.weights}, arrays)
        for w in self.weights:
            w.assign(arrays[w.name])


def check_state(expected: dict, arrays: dict) -> None:
    """Raise ``DemoError`` unless ``arrays`` (name -> array) has exactly the names and shapes of ``expected``."""
    found = {name: tuple(np.shape(a)) for name, a in arrays.items()}
    if found != expected:
        differences = [f"{name} {found.get(name, 'missing')} where the model has {expected.get(name, 'none')}"
                       for name in sorted(set(found) | set(expected)) if found.get(name) != expected.get(name)]
        raise DemoError(f"the checkpoint's model weights do not fit the model: {'; '.join(differences)}")
