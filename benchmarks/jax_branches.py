"""How a jitted JAX step should branch on this device: ``lax.cond`` or a device-side select.

``POLYAK_JAX_BRANCHES`` (see :func:`polyak.backends.jax_backend.branch_mode`) makes a traced
step's branches (accumulate or update, the EMA overwrite) either XLA ``conditional``s, whose
predicate XLA's GPU runtime reads on the host, or both branches and a ``jnp.where`` per array.
Both give the same numbers; this times them on ``jax.devices()[0]``::

    python benchmarks/jax_branches.py [--workloads W1,W3] [--cycles 15] [--json PATH]

For each workload (``polyak.bench.workloads``, with gradient accumulation over two calls and
the EMA overwritten every third update added to its options), each setting gets its own
freshly traced ``jax.jit`` step, weights and optimizer values donated. A sample is one
accumulation cycle (an accumulating call and an updating one) timed to
``block_until_ready``, the settings interleaved sample by sample after a warm-up; the line
gives the median per call. Prints one line per (workload, setting), then the faster setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # this checkout's polyak

import jax  # noqa: E402
import numpy as np  # noqa: E402

import polyak  # noqa: E402
from polyak.backends import jax_backend  # noqa: E402
from polyak.bench.workloads import WORKLOADS  # noqa: E402

SETTINGS = ("cond", "select")
ACCUMULATION = 2  #: calls per update: one sample is a cycle of these
BRANCHING = {"gradient_accumulation_steps": ACCUMULATION, "use_ema": True, "ema_overwrite_frequency": 3}


def make_step(workload, setting, device):
    """A zero-argument function running one accumulation cycle of ``workload``, traced and
    compiled under ``setting``; and the seconds the first cycle (the compile) took."""
    os.environ[jax_backend.BRANCHES_VARIABLE] = setting
    rng = np.random.default_rng(0)
    params = [jax.device_put(rng.standard_normal(s, dtype=np.float32), device) for s in workload.shapes]
    grads = [jax.device_put(rng.standard_normal(s, dtype=np.float32) * 1e-3, device) for s in workload.shapes]
    variables = [polyak.Variable(p, name=f"t{i}_{'bias' if p.ndim == 1 else 'kernel'}") for i, p in enumerate(params)]
    opt = polyak.SGD(**{**workload.options, **BRANCHING})
    if workload.exclude_vectors:
        opt.exclude_from_weight_decay(var_names=["bias"])
    opt.build(variables)
    # a new function per setting, so jit traces it afresh under the setting; weights donated first
    step = jax.jit(lambda params, values, grads: opt.stateless_apply(values, grads, params), donate_argnums=(0, 1))
    state = {"params": params, "values": [jax.device_put(v.value, device) for v in opt.variables]}

    def cycle():
        for _ in range(ACCUMULATION):
            state["params"], state["values"] = step(state["params"], state["values"], grads)
        jax.block_until_ready((state["params"], state["values"]))

    start = time.perf_counter()
    cycle()
    return cycle, time.perf_counter() - start


def measure(workload, device, cycles, warmup):
    """``{setting: (median seconds per call, first cycle's seconds)}``, settings interleaved."""
    steps, first = {}, {}
    for setting in SETTINGS:
        steps[setting], first[setting] = make_step(workload, setting, device)
    for _ in range(warmup):
        for setting in SETTINGS:
            steps[setting]()
    samples = {setting: [] for setting in SETTINGS}
    for _ in range(cycles):
        for setting in SETTINGS:
            start = time.perf_counter()
            steps[setting]()
            samples[setting].append((time.perf_counter() - start) / ACCUMULATION)
    return {setting: (statistics.median(samples[setting]), first[setting]) for setting in SETTINGS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="W1,W3", help="comma-separated keys of polyak.bench.workloads")
    parser.add_argument("--cycles", type=int, default=15, help="timed accumulation cycles per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed cycles per setting after the compile")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in keys if k not in WORKLOADS]
    if unknown or not keys:
        parser.error(f"--workloads must name some of {', '.join(WORKLOADS)}. Received: --workloads={args.workloads!r}")
    if args.cycles < 1 or args.warmup < 0:
        parser.error(f"--cycles must be at least 1 and --warmup at least 0. Received: --cycles={args.cycles}, "
                     f"--warmup={args.warmup}")

    device = jax.devices()[0]
    previous = os.environ.get(jax_backend.BRANCHES_VARIABLE)
    print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}); options added: {BRANCHING}; "
          f"median of {args.cycles} cycles of {ACCUMULATION} calls")
    results, faster = [], {}
    try:
        os.environ[jax_backend.BRANCHES_VARIABLE] = "auto"
        auto_picks = jax_backend.branch_mode(device.platform)
        for key in keys:
            workload = WORKLOADS[key]
            timed = measure(workload, device, args.cycles, args.warmup)
            for setting, (median, first) in timed.items():
                print(f"{key:3} {setting:6} {median * 1e3:9.3f} ms/call   first cycle (compile) {first:6.2f} s"
                      f"   [{workload.title}, {workload.parameters / 1e6:.1f}M parameters]")
                results.append({"workload": key, "setting": setting, "median_ms_per_call": median * 1e3,
                                "first_cycle_s": first, "parameters": workload.parameters})
            best = min(timed, key=lambda s: timed[s][0])
            other = next(s for s in SETTINGS if s != best)
            faster[key] = best
            print(f"{key:3} faster: {best} ({timed[best][0] / timed[other][0]:.2f}x the time of {other})")
        print(f"POLYAK_JAX_BRANCHES=auto picks {auto_picks} on {device.platform}")
    finally:
        if previous is None:
            os.environ.pop(jax_backend.BRANCHES_VARIABLE, None)
        else:
            os.environ[jax_backend.BRANCHES_VARIABLE] = previous
    if args.json:
        report = {"jax": jax.__version__, "platform": device.platform, "device": device.device_kind,
                  "options_added": BRANCHING, "cycles": args.cycles, "calls_per_cycle": ACCUMULATION,
                  "auto_picks": auto_picks,
                  "results": results, "faster": faster}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return faster


if __name__ == "__main__":
    main()
