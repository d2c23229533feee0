"""A process that steps, leaves a kernel compiling in the background, and exits (issue 24).

``python tests/exit_child.py WEIGHTS SIZES [gc] [main]``: WEIGHTS is ``numpy`` (``polyak.SGD``
on NumPy arrays), ``torch`` (``polyak.SGD`` on tensors) or ``face`` (``polyak.torch.SGD``);
SIZES is ``big`` (4 x 16 MB) or ``small`` (64 tensors of 32 x 32); ``gc`` collects before the
exit; ``main`` keeps the optimizer inside a function instead of dropping it. The first step
queues numba's loading, the second, once numba is loaded, the kernel's compile (with a cold
``POLYAK_KERNEL_CACHE``), and the process ends while that compiles. It prints ``done``; its
exit code must be 0. It imports the polyak that ``PYTHONPATH`` (or the install) gives.
"""

import gc
import sys

import numpy as np

import polyak
from polyak.tiers import background


def weights_and_optimizer(kind, sizes):
    shapes = [(4 << 20,)] * 4 if sizes == "big" else [(32, 32)] * 64
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    if kind == "numpy":
        return values, polyak.SGD(learning_rate=0.1, momentum=0.9)
    import torch

    if kind == "torch":
        return [torch.from_numpy(v) for v in values], polyak.SGD(learning_rate=0.1, momentum=0.9)
    import polyak.torch as polyak_torch

    params = [torch.nn.Parameter(torch.from_numpy(v)) for v in values]
    return params, polyak_torch.SGD(params, lr=0.1, momentum=0.9)


def step(kind, weights, opt):
    if kind == "face":
        for w in weights:
            w.grad = w.detach() * 0.5
        opt.step()
    else:
        opt.apply([w * 0.5 for w in weights], weights)


def train(kind, sizes):
    weights, opt = weights_and_optimizer(kind, sizes)
    step(kind, weights, opt)
    background.wait()  # numba is loaded: the next step queues its kernel's compile
    step(kind, weights, opt)
    return weights, opt


def main(kind, sizes, collect):
    weights, opt = train(kind, sizes)
    del weights, opt
    if collect:
        gc.collect()
    print("done")


if __name__ == "__main__":
    kind, sizes, *flags = sys.argv[1:]
    if "main" in flags:
        main(kind, sizes, "gc" in flags)
    else:
        held = train(kind, sizes)  # module-level: the interpreter frees them at exit
        if "gc" in flags:
            gc.collect()
        print("done")
