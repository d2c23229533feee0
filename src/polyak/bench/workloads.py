"""The benchmark workloads: parameter shapes of real models, and the options each runs with."""

from __future__ import annotations

from dataclasses import dataclass, field


def resnet50_shapes():
    """161 tensors, 25.6M parameters: conv kernels, batch-norm scale and shift, classifier."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    channels = 64
    for mid, out, blocks in [(64, 256, 3), (128, 512, 4), (256, 1024, 6), (512, 2048, 3)]:
        for block in range(blocks):
            for kernel in [(mid, channels, 1, 1), (mid, mid, 3, 3), (out, mid, 1, 1)]:
                shapes += [kernel, (kernel[0],), (kernel[0],)]
            if block == 0:
                shapes += [(out, channels, 1, 1), (out,), (out,)]
            channels = out
    return shapes + [(1000, 2048), (1000,)]


def many_small_shapes():
    return [(32, 32)] * 2000


def gpt2_small_shapes():
    """148 tensors, 124M parameters: embeddings, 12 transformer blocks, final norm."""
    d, vocab, context = 768, 50257, 1024
    shapes = [(vocab, d), (context, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


BASIC = {"learning_rate": 0.01, "momentum": 0.9}
FULL = {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
        "global_clipnorm": 1.0, "use_ema": True}


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    shapes: list = field(hash=False)
    options: dict = field(hash=False)
    #: exclude 1-d tensors (biases, norms) from weight decay
    exclude_vectors: bool = False

    @property
    def parameters(self):
        n = 0
        for shape in self.shapes:
            size = 1
            for s in shape:
                size *= s
            n += size
        return n


WORKLOADS = {
    "W1": Workload("W1", "ResNet-50-like, momentum", resnet50_shapes(), BASIC),
    "W2": Workload("W2", "2000 tensors of 32x32, momentum", many_small_shapes(), BASIC),
    "W3": Workload("W3", "ResNet-50-like, all features", resnet50_shapes(), FULL, exclude_vectors=True),
    "W4": Workload("W4", "GPT-2-small-like, momentum", gpt2_small_shapes(), BASIC),
}


def bytes_moved(workload, itemsize=4):
    """Bytes a step must read and write per parameter, at the least.

    Momentum SGD reads w, g, v and writes w, v (5 words). The full-feature step
    also reads g once for the global norm and reads and writes the EMA (8 words).
    """
    words = 8 if workload.options.get("use_ema") else 5
    return words * itemsize * workload.parameters
