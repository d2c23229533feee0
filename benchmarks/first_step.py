"""Time to the first steps of a process: ``import polyak``, the first step, the first fused step.

Each measurement runs in a fresh Python process with this checkout first on ``sys.path``, with
the kernel cache warm (compiled once beforehand, in a folder of its own) or cold (an empty
temporary folder), compiling in the background (the default) or the foreground
(``POLYAK_BACKGROUND_COMPILE=0``). A face is ``numpy`` (``polyak.SGD`` on NumPy arrays),
``torch`` (``polyak.SGD`` on CPU tensors) or ``torch-face`` (``polyak.torch.SGD``); a model is
``wide`` (40 weights of 256 x 256) or ``mlp`` (the demo's 64-128-64-10, weights and biases).
The process steps until the fused tier has taken a step (30 s at most), then 20 steps more,
and reports: the first step's time, when the first fused step ended (from the start of the
first step), after how many steps, and the median step before (the reference tier's) and
after it. Usage: ``python benchmarks/first_step.py [--repeats N] [--faces ...] [--models ...]``.
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
    "nesterov": "dict(learning_rate=0.01, momentum=0.9, nesterov=True)",
    "demo": "dict(learning_rate=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, global_clipnorm=1.0, "
            "use_ema=True)",
}
MODELS = {
    "wide": "[(256, 256)] * 40",
    "mlp": "[(64, 128), (128,), (128, 64), (64,), (64, 10), (10,)]",
}

_CHILD = r'''
import statistics, sys, time
sys.path.insert(0, {root!r})
start = time.perf_counter()
import polyak
imported = time.perf_counter()
import numpy as np
face, shapes, config = {face!r}, {shapes}, {config}
rng = np.random.default_rng(0)
grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(4)]
if face == "numpy":
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
else:
    import torch
    weights = [torch.nn.Parameter(torch.from_numpy(rng.normal(size=s).astype(np.float32))) for s in shapes]
    grads = [[torch.from_numpy(g) for g in step] for step in grads]
if face == "torch-face":
    import polyak.torch
    opt = polyak.torch.SGD(weights, lr=config["learning_rate"], momentum=config["momentum"],
                           nesterov=config.get("nesterov", False))
    def step(g):
        for w, gw in zip(weights, g):
            w.grad = gw
        opt.step()
else:
    opt = polyak.SGD(**config)
    def step(g):
        opt.apply(g, weights)
times, tiers = [], []
began = time.perf_counter()
fused_at = None
while (fused_at is None or len(times) < fused_at + 21) and time.perf_counter() - began < 30:
    t = time.perf_counter()
    step(grads[len(times) % 4])
    times.append(time.perf_counter() - t)
    tiers.append(opt._last_tier)
    if fused_at is None and tiers[-1] == "cpu_fused":
        fused_at = len(times) - 1
        fused_after = time.perf_counter() - began
after = times[fused_at + 1:] if fused_at is not None else []
print({{"import": imported - start, "first": times[0], "fused_after": fused_after if fused_at is not None else None,
       "steps": fused_at, "before": statistics.median(times[:fused_at]) if fused_at else None,
       "after": statistics.median(after) if after else None,
       "tiers": "".join("F" if t == "cpu_fused" else "R" for t in tiers[:12])}})
'''


def measure(face, model, config, cache, mode):
    env = dict(os.environ, POLYAK_KERNEL_CACHE=cache, POLYAK_BACKGROUND_COMPILE="1" if mode == "background" else "0")
    code = _CHILD.format(root=str(ROOT / "src"), face=face, shapes=MODELS[model], config=CONFIGS[config])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{face} {model} {config} {mode}: {out.stderr}")
    return eval(out.stdout.strip().splitlines()[-1])


def _median(runs, key):
    found = [r[key] for r in runs if r[key] is not None]
    return statistics.median(found) if found else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faces", default="numpy,torch-face", help="numpy, torch, torch-face")
    parser.add_argument("--models", default="wide", help=", ".join(MODELS))
    parser.add_argument("--configs", default="momentum,nesterov", help=", ".join(CONFIGS))
    parser.add_argument("--modes", default="background",
                        help="background: POLYAK_BACKGROUND_COMPILE=1 (the default); foreground: =0")
    args = parser.parse_args(argv)
    rows = []
    for face in args.faces.split(","):
        for model in args.models.split(","):
            for config in args.configs.split(","):
                warm_cache = tempfile.mkdtemp(prefix="polyak-warm-")
                measure(face, model, config, warm_cache, "foreground")  # fills the warm cache
                for mode in args.modes.split(","):
                    for cache_state in ("warm", "cold"):
                        runs = [measure(face, model, config,
                                        warm_cache if cache_state == "warm" else tempfile.mkdtemp(), mode)
                                for _ in range(args.repeats)]
                        row = dict(face=face, model=model, config=config, mode=mode, cache=cache_state,
                                   tiers=runs[0]["tiers"])
                        for key in ("import", "first", "fused_after", "steps", "before", "after"):
                            row[key] = _median(runs, key)
                        rows.append(row)
                        print(f"{face:10} {model:4} {config:8} {mode:10} {cache_state:4}  import "
                              f"{row['import'] * 1e3:4.0f} ms  first step {row['first'] * 1e3:7.1f} ms  "
                              f"first fused step done after {row['fused_after'] * 1e3:6.0f} ms "
                              f"({row['steps']:.0f} steps before it)  median step before {row['before'] * 1e3:5.2f} ms, "
                              f"after {row['after'] * 1e3:5.2f} ms  tiers {row['tiers']}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
