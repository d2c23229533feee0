"""The demo's MLP on PyTorch: the same layers and initial weights as :mod:`polyak.demo.mlp`,
an ``nn.Module`` whose backward pass is autograd's, its parameters updated in place by polyak.

The kernels are stored ``(fan_in, fan_out)`` as in the NumPy model (``z = h @ W + b``, not
``nn.Linear``'s transposed layout), so the checkpoints of both hold the same names and shapes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from polyak.demo.mlp import check_state, initial_weights, layer_sizes


class _Net(torch.nn.Module):
    def __init__(self, weights: dict):
        super().__init__()
        for name, value in weights.items():
            self.register_parameter(name, torch.nn.Parameter(torch.from_numpy(value.copy())))

    def forward(self, x):
        values = list(self.parameters())
        h = x
        for layer in range(0, len(values), 2):
            h = torch.addmm(values[layer + 1], h, values[layer])
            if layer + 2 < len(values):
                h = torch.relu(h)
        return h


class TorchMLP:
    """The MLP's weights as ``nn.Parameter``s of ``self.module``, trained with autograd."""

    def __init__(self, hidden, seed):
        # The matrices are small (a batch of 32 by 128 units): splitting them over threads costs
        # more than it saves, tens of times more on a busy 2-core machine. The demo runs on one.
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.sizes = layer_sizes(hidden)
        self.module = _Net(initial_weights(self.sizes, seed))
        named = list(self.module.named_parameters())
        self.names = [name for name, _ in named]
        self.weights = [p for _, p in named]
        self.biases = [p for name, p in named if name.endswith("bias")]  # plain tensors carry no name to exclude by

    def close(self) -> None:
        """Give torch back the thread count it had before the run."""
        torch.set_num_threads(self._threads)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.weights)

    def loss_and_grads(self, x, y):
        """``(mean loss, correct predictions, gradients aligned with self.weights)`` on a batch."""
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        for p in self.weights:
            p.grad = None
        logits = self.module(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        correct = int((logits.detach().argmax(dim=1) == y).sum())
        return loss.item(), correct, [p.grad for p in self.weights]

    def apply_gradients(self, opt, grads) -> None:
        """One optimizer step: polyak updates the parameters in place, under ``torch.no_grad``."""
        opt.apply(grads, self.weights)

    def evaluate(self, x, y):
        """``(mean loss, accuracy)`` of the current weights on ``x``, ``y``."""
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        with torch.no_grad():
            logits = self.module(x)
            loss = F.cross_entropy(logits, y)
            accuracy = (logits.argmax(dim=1) == y).double().mean()
        return float(loss), float(accuracy)

    def state(self) -> dict[str, np.ndarray]:
        return {name: p.detach().numpy().copy() for name, p in zip(self.names, self.weights)}

    def load_state(self, arrays: dict) -> None:
        """Set every weight from ``arrays`` (name -> array) after checking all names and shapes."""
        check_state({name: tuple(p.shape) for name, p in zip(self.names, self.weights)}, arrays)
        with torch.no_grad():
            for name, p in zip(self.names, self.weights):
                p.copy_(torch.from_numpy(np.asarray(arrays[name], dtype=np.float32)))
