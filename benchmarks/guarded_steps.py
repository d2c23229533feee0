"""Time a guarded step (``skip_nonfinite``, ``LossScaleOptimizer``) on the fused tier and on the
reference tier, beside the unguarded step, on this machine's CPU.

    python benchmarks/guarded_steps.py [--workloads W1 W2] [--repeats 15]

Prints one line per workload, array kind and guard: the median milliseconds per ``apply`` on
each tier (the fused tier named as the one that ran).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("POLYAK_BACKGROUND_COMPILE", "0")  # time the kernel, not the first steps' reference

import numpy as np  # noqa: E402

import polyak  # noqa: E402
from polyak.bench.workloads import WORKLOADS  # noqa: E402

GUARDS = {
    "unguarded": lambda: polyak.SGD(0.01, momentum=0.9),
    "skip_nonfinite": lambda: polyak.SGD(0.01, momentum=0.9, skip_nonfinite=True),
    "LossScaleOptimizer": lambda: polyak.optimizers.LossScaleOptimizer(polyak.SGD(0.01, momentum=0.9)),
}


def median_ms(workload, make, fused, kind, repeats, warmup=3):
    """``(median ms per apply, the tier that ran)``."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype(np.float32) for s in WORKLOADS[workload].shapes]
    grads = [rng.normal(size=s).astype(np.float32) for s in WORKLOADS[workload].shapes]
    if kind == "torch":
        import torch

        weights, grads = [torch.from_numpy(w) for w in weights], [torch.from_numpy(g) for g in grads]
    opt = make()
    getattr(opt, "inner_optimizer", opt).fused = fused
    for _ in range(warmup):
        opt.apply(grads, weights)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.apply(grads, weights)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3, opt._last_tier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=sorted(WORKLOADS))
    parser.add_argument("--kinds", nargs="+", default=["numpy", "torch"], choices=["numpy", "torch"])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    for workload in args.workloads:
        for kind in args.kinds:
            for guard, make in GUARDS.items():
                fused, tier = median_ms(workload, make, True, kind, args.repeats)
                reference, _ = median_ms(workload, make, False, kind, args.repeats)
                print(f"{workload} {kind:5} {guard:18}  {tier} {fused:7.2f} ms   reference {reference:7.2f} ms",
                      flush=True)


if __name__ == "__main__":
    main()
