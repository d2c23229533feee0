"""Time to the first steps of a process: ``import polyak``, the first ``apply``, the first ten.

Each measurement runs in a fresh Python process with this checkout first on ``sys.path``,
on the demo's MLP shapes (64-128-64-10, weights and biases), with the kernel cache warm
(``$POLYAK_KERNEL_CACHE`` as set, compiled once beforehand) or cold (an empty temporary
folder). Usage: ``python benchmarks/first_step.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "momentum": "dict(learning_rate=0.01, momentum=0.9)",
    "demo": "dict(learning_rate=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, global_clipnorm=1.0, "
            "use_ema=True)",
}

_CHILD = r'''
import sys, time
sys.path.insert(0, {root!r})
start = time.perf_counter()
import polyak
imported = time.perf_counter()
import numpy as np
shapes = [(64, 128), (128,), (128, 64), (64,), (64, 10), (10,)]
rng = np.random.default_rng(0)
if {backend!r} == "torch":
    import torch
    weights = [torch.nn.Parameter(torch.from_numpy(rng.normal(size=s).astype(np.float32))) for s in shapes]
    grads = [[torch.from_numpy(rng.normal(size=s).astype(np.float32)) for s in shapes] for _ in range(10)]
else:
    weights = [polyak.Variable(rng.normal(size=s).astype(np.float32), name=f"w{{i}}") for i, s in enumerate(shapes)]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(10)]
opt = polyak.SGD(**{config})
ready = time.perf_counter()
times, tiers = [], []
for g in grads:
    t = time.perf_counter()
    opt.apply(g, weights)
    times.append(time.perf_counter() - t)
    tiers.append(opt._last_tier)
print({{"import": imported - start, "first": times[0], "ten": sum(times), "last": times[-1],
       "tiers": "".join("F" if t == "cpu_fused" else "R" for t in tiers)}})
'''


def measure(backend, config, cache):
    env = dict(os.environ, POLYAK_KERNEL_CACHE=cache)
    code = _CHILD.format(root=str(ROOT), backend=backend, config=CONFIGS[config])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="numpy,torch")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args(argv)
    warm_cache = tempfile.mkdtemp(prefix="polyak-warm-")
    rows = []
    for backend in args.backends.split(","):
        for config in args.configs.split(","):
            measure(backend, config, warm_cache)  # fills the warm cache
            for cache_state in ("warm", "cold"):
                runs = [measure(backend, config, warm_cache if cache_state == "warm" else tempfile.mkdtemp())
                        for _ in range(args.repeats)]
                row = {"backend": backend, "config": config, "cache": cache_state, "tiers": runs[0]["tiers"]}
                for key in ("import", "first", "ten", "last"):
                    row[key] = statistics.median(r[key] for r in runs)
                rows.append(row)
                print(f"{backend:6} {config:9} {cache_state:5} import {row['import'] * 1e3:6.0f} ms  "
                      f"first apply {row['first'] * 1e3:7.1f} ms  first 10 {row['ten'] * 1e3:7.1f} ms  "
                      f"10th {row['last'] * 1e3:6.2f} ms  tiers {row['tiers']}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
