"""Time to the first steps of a process: ``import polyak``, the first ``apply``, the first ten.

Each measurement runs in a fresh Python process with this checkout first on ``sys.path``,
on the demo's MLP shapes (64-128-64-10, weights and biases), with the kernel cache warm
(``$POLYAK_KERNEL_CACHE`` as set, compiled once beforehand) or cold (an empty temporary
folder), compiling in the background (the default) or the foreground
(``POLYAK_BACKGROUND_COMPILE=0``). After the first ten steps the process goes on stepping
until the fused tier takes over, and reports when it did (from the first ``apply``).
Usage: ``python benchmarks/first_step.py [--repeats N]``.
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
first = time.perf_counter() - sum(times)
steps = len(times)
while opt._last_tier != "cpu_fused" and time.perf_counter() - first < 30:
    opt.apply(grads[steps % 10], weights)
    steps += 1
print({{"import": imported - start, "first": times[0], "ten": sum(times), "last": times[-1],
       "fused_after": time.perf_counter() - first if opt._last_tier == "cpu_fused" else None,
       "steps": steps, "tiers": "".join("F" if t == "cpu_fused" else "R" for t in tiers)}})
'''


def measure(backend, config, cache, mode):
    env = dict(os.environ, POLYAK_KERNEL_CACHE=cache, POLYAK_BACKGROUND_COMPILE="1" if mode == "background" else "0")
    code = _CHILD.format(root=str(ROOT / "src"), backend=backend, config=CONFIGS[config])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="numpy,torch")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--modes", default="background,foreground",
                        help="background: POLYAK_BACKGROUND_COMPILE=1 (the default); foreground: =0")
    args = parser.parse_args(argv)
    warm_cache = tempfile.mkdtemp(prefix="polyak-warm-")
    rows = []
    for backend in args.backends.split(","):
        for config in args.configs.split(","):
            measure(backend, config, warm_cache, "foreground")  # fills the warm cache
            for mode in args.modes.split(","):
                for cache_state in ("warm", "cold"):
                    runs = [measure(backend, config, warm_cache if cache_state == "warm" else tempfile.mkdtemp(), mode)
                            for _ in range(args.repeats)]
                    row = dict(backend=backend, config=config, mode=mode, cache=cache_state, tiers=runs[0]["tiers"])
                    for key in ("import", "first", "ten", "last", "steps"):
                        row[key] = statistics.median(r[key] for r in runs)
                    row["fused_after"] = statistics.median(r["fused_after"] or float("nan") for r in runs)
                    rows.append(row)
                    print(f"{backend:6} {config:9} {mode:10} {cache_state:5} import {row['import'] * 1e3:4.0f} ms  "
                          f"first apply {row['first'] * 1e3:7.1f} ms  first 10 {row['ten'] * 1e3:7.1f} ms  "
                          f"10th {row['last'] * 1e3:5.2f} ms  tiers {row['tiers']}  fused after "
                          f"{row['fused_after']:5.2f} s ({row['steps']:.0f} steps)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
