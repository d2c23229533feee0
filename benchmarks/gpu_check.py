"""The check to run whenever a CUDA GPU is at hand (an H100 or H200): tier parity, then timings.

Installs nothing; assumes PyTorch with CUDA and Triton, and polyak installed
(``bash benchmarks/gpu_setup.sh``, which also installs the pure-Python wheels carried in
``.gpu-wheels/`` where their modules are missing). Run from the repository root::

    python benchmarks/gpu_check.py [--steps 5] [--repeats 20] [--json benchmarks/results/h100.json]

1. Parity on the GPU, with fresh random data each run (the seed is printed): for each
   configuration and weight dtype, the Triton tier (what CUDA tensors take by default) and the
   foreach tier (``POLYAK_TIER=foreach``) against the reference tier (``fused = False``), on
   every state entry after every step, bit for bit (to 1e-6 relative when clipping by norm,
   whose sums run in another order). 16-bit weights and master weights are included: the
   line says which tier ran them.
2. Timings of W1-W4 (``polyak.bench.workloads``) on the GPU: polyak on each tier against
   ``torch.optim.SGD(fused=True)`` and ``foreach=True`` (for W3 the torch composite: clip,
   decay, fused SGD, EMA lerp), and the floor (the bytes a step must move over the copy
   bandwidth measured in the same run); median step time with CUDA events, interleaved.
2b. No synchronisation: after two steps, each tier takes more steps under
   ``torch.cuda.set_sync_debug_mode("error")`` (a blocking copy or a read of a device value
   raises), for configurations that read the stored rate, clip by norm, accumulate and overwrite
   with the average.
3. ``polyak bench --device cuda`` (skip with ``--no-bench``): the benchmark's contenders on the
   GPU, JAX and optax included, against its stream probe there.
4. ``benchmarks/jax_branches.py`` in a process of its own (skip with ``--no-jax``): a jitted
   JAX step with accumulation and EMA overwrite, its branches as ``lax.cond`` and as a device
   select (``POLYAK_JAX_BRANCHES``), and which is faster on this GPU.

Each phase and workload starts only while ``--budget`` seconds (480) have not passed since the
start, and ``--json`` is written after each, so a run cut short keeps what it measured.
``--dry-run`` runs the same code on the CPU (the Triton tier in Triton's interpreter, small
workloads, no timings of Triton), to find a mistake in this script before a GPU is at hand.

Prints a short table of each, last. Exits 1 if any parity line fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import polyak
from polyak.bench import contenders
from polyak.bench.workloads import WORKLOADS, bytes_moved

DEVICE = torch.device("cuda")
#: what the Triton tier needs asked for (``--dry-run``: CPU tensors, in the interpreter)
TRITON_ENV = {}
SHAPES = [(3, 5), (1031,), (2, 1, 3), (257, 129)]
NORM_RTOL = {torch.float32: 1e-6, torch.float64: 1e-13}
CONFIGS = {
    "momentum": dict(momentum=0.9),
    "plain": dict(momentum=0.0),
    "nesterov-decay-ema": dict(momentum=0.9, nesterov=True, weight_decay=0.1, use_ema=True,
                               ema_overwrite_frequency=3),
    "clipvalue": dict(momentum=0.9, clipvalue=0.1),
    "clipnorm-loss-scale": dict(momentum=0.9, clipnorm=0.5, loss_scale_factor=16.0),
    "global-clipnorm": dict(momentum=0.9, nesterov=True, global_clipnorm=1.0, use_ema=True),
    "accumulation": dict(momentum=0.9, gradient_accumulation_steps=3, use_ema=True, loss_scale_factor=3.0),
    "all": dict(momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=2.0, use_ema=True, ema_momentum=0.9,
                ema_overwrite_frequency=4, gradient_accumulation_steps=2, loss_scale_factor=4.0),
    "master-weights": dict(momentum=0.9, use_ema=True, weight_decay=0.01, clipvalue=1.0, master_weights=True),
    # the norm clips the float32 mean of the accumulated gradients, so the Triton tier takes it
    "master-weights-all": dict(momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=2.0, use_ema=True,
                               ema_overwrite_frequency=4, gradient_accumulation_steps=2, loss_scale_factor=4.0,
                               master_weights=True),
    # a schedule: every tier computes its rate from the host count in NumPy (Keras's cos)
    "cosine-schedule": dict(momentum=0.9, learning_rate=polyak.optimizers.schedules.CosineDecay(
        0.1, decay_steps=4, alpha=0.1, warmup_target=0.2, warmup_steps=2)),
    # guarded steps (a NaN on step POISONED): the Triton tier keeps the flag on the device ...
    "skip-nonfinite": dict(momentum=0.9, weight_decay=0.01, clipvalue=1.0, skip_nonfinite=True),
    "loss-scale-optimizer": dict(momentum=0.9, nesterov=True, loss_scale_optimizer=True),
    # ... unless the plan decides on the count, which it then reads back
    "skip-nonfinite-ema": dict(momentum=0.9, use_ema=True, gradient_accumulation_steps=2, skip_nonfinite=True),
}
#: the step whose first gradient holds a NaN, in a guarded configuration
POISONED = 2
#: (configuration, dtype) pairs run: every configuration in float32, a few in the other dtypes
PAIRS = ([(name, torch.float32) for name in CONFIGS]
         + [(name, torch.float64) for name in ("momentum", "nesterov-decay-ema", "global-clipnorm", "accumulation")]
         + [(name, dtype) for name in ("momentum", "nesterov-decay-ema", "accumulation", "master-weights",
                                       "master-weights-all", "skip-nonfinite") for dtype in (torch.float16, torch.bfloat16)])
TIERS = {"triton": TRITON_ENV, "foreach": {"POLYAK_TIER": "foreach"}}
#: configurations whose step reads a device value unless the tier keeps it there
SYNC_CONFIGS = ("momentum", "global-clipnorm", "clipnorm-loss-scale", "all", "cosine-schedule", "skip-nonfinite",
                "loss-scale-optimizer")


def guarded(options):
    return bool(options.get("skip_nonfinite") or options.get("loss_scale_optimizer"))


def optimizer(options, fused):
    """``polyak.SGD`` of ``options`` (in a ``LossScaleOptimizer`` if they say so), ``fused`` or not."""
    options = {"learning_rate": 0.05, **options}
    wrapped = options.pop("loss_scale_optimizer", False)
    sgd = polyak.SGD(**options)
    sgd.fused = fused
    return polyak.LossScaleOptimizer(sgd, initial_scale=8.0, dynamic_growth_steps=2) if wrapped else sgd


def gradients(generator, dtype, step, options):
    """One step's gradients; in a guarded configuration, a NaN in the first on step ``POISONED``."""
    grads = [(torch.randn(s, generator=generator) * 2).to(DEVICE, dtype) for s in SHAPES]
    if guarded(options) and step == POISONED:
        grads[0].view(-1)[0] = float("nan")
    return grads


@contextlib.contextmanager
def on_tier(tier):
    """``POLYAK_TIER`` as ``tier`` asks for ("reference" or a key of TIERS), restored after."""
    saved = os.environ.pop("POLYAK_TIER", None)
    os.environ.update(TIERS.get(tier, {}))
    try:
        yield
    finally:
        os.environ.pop("POLYAK_TIER", None)
        if saved is not None:
            os.environ["POLYAK_TIER"] = saved


def run(options, dtype, tier, steps, seed):
    """``(state after each step, tier that ran last)``; ``tier``: "reference" or a key of TIERS."""
    with on_tier(tier):
        generator = torch.Generator(device="cpu").manual_seed(seed)
        weights = [torch.nn.Parameter(torch.randn(s, generator=generator).to(DEVICE, dtype)) for s in SHAPES]
        opt = optimizer(options, tier != "reference")
        getattr(opt, "inner_optimizer", opt).exclude_from_weight_decay(var_list=[weights[1]])
        history = []
        for step in range(steps):
            opt.apply(gradients(generator, dtype, step, options), weights)
            history.append([w.detach().cpu() for w in weights] + [v.value.detach().cpu() for v in opt.variables])
        return history, opt._last_tier


def compare(want, got, by_norm):
    """"bitwise", "close", or what differs first."""
    close = False
    for step, (a, b) in enumerate(zip(want, got)):
        for k, (x, y) in enumerate(zip(a, b)):
            if x.dtype != y.dtype or x.shape != y.shape:
                return f"step {step} entry {k}: {y.dtype}{tuple(y.shape)} for {x.dtype}{tuple(x.shape)}"
            if torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
                continue
            if x.is_floating_point() and by_norm and torch.allclose(y, x, rtol=NORM_RTOL.get(x.dtype, 1e-3),
                                                                   atol=NORM_RTOL.get(x.dtype, 1e-3)):
                close = True
                continue
            diff = (y.double() - x.double()).abs().max().item() if x.is_floating_point() else "?"
            return f"MISMATCH step {step} entry {k}: max |diff| {diff}"
    return "close" if close else "bitwise"


def parity(steps, seed):
    rows, failed = [], False
    for name, dtype in PAIRS:
        options = CONFIGS[name]
        want, ran = run(options, dtype, "reference", steps, seed)
        assert ran == "reference", ran
        by_norm = bool(options.get("clipnorm") or options.get("global_clipnorm"))
        for tier in TIERS:
            got, ran = run(options, dtype, tier, steps, seed)
            verdict = compare(want, got, by_norm)
            failed |= verdict.startswith("MISMATCH") or verdict.startswith("step")
            rows.append((name, str(dtype).removeprefix("torch."), tier, ran, verdict))
            print(f"parity {name:22} {rows[-1][1]:9} {tier:8} ran {ran:10} {verdict}", flush=True)
    return rows, failed


def sync_free(steps=3):
    """Per tier and configuration: "no sync", or the first line of what the debug mode raised
    (expected only of a guarded step on the foreach tier, which reads its flag back)."""
    rows, failed = [], False
    for name in SYNC_CONFIGS:
        for tier in ("reference", *TIERS):
            with on_tier(tier):
                generator = torch.Generator(device="cpu").manual_seed(0)
                weights = [torch.nn.Parameter(torch.randn(s, generator=generator).to(DEVICE)) for s in SHAPES]
                grads = [gradients(generator, torch.float32, step, CONFIGS[name]) for step in range(2 + steps)]
                opt = optimizer(CONFIGS[name], tier != "reference")
                for g in grads[:2]:
                    opt.apply(g, weights)
                torch.cuda.synchronize()
                verdict = "no sync"
                torch.cuda.set_sync_debug_mode("error")
                try:
                    for g in grads[2:]:
                        opt.apply(g, weights)
                except RuntimeError as error:
                    verdict = "SYNC " + str(error).splitlines()[0][:120]
                finally:
                    torch.cuda.set_sync_debug_mode(0)
                if verdict != "no sync" and tier == "foreach" and guarded(CONFIGS[name]):
                    verdict = "sync (expected: the foreach tier reads its flag)"
                failed |= not verdict.startswith(("no sync", "sync (expected"))
                rows.append((name, "float32", tier, opt._last_tier, verdict))
                print(f"sync {name:22} {tier:9} ran {opt._last_tier:10} {verdict}", flush=True)
    return rows, failed


def jax_branches(dry_run, json_path=None):
    """``benchmarks/jax_branches.py`` in its own process (JAX then has the GPU to itself); its
    output lines, or why there are none."""
    script = Path(__file__).resolve().parent / "jax_branches.py"
    command = [sys.executable, str(script), "--cycles", "2" if dry_run else "10"]
    if dry_run:
        command += ["--workloads", "W1", "--warmup", "0"]
    if json_path:
        command += ["--json", json_path]
    env = {k: v for k, v in os.environ.items() if k != "POLYAK_JAX_BRANCHES"}
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return ["jax_branches.py: timed out after 240 s"]
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0:
        lines.append(f"jax_branches.py exited {done.returncode}: " + done.stderr.strip()[-600:])
    for line in lines:
        print("jax " + line, flush=True)
    return lines


# --- timings --------------------------------------------------------------------------------------
def _tensors(workload, seed=0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).to(DEVICE)) for s in workload.shapes]
    grads = [(torch.randn(s, generator=generator) * 1e-3).to(DEVICE) for s in workload.shapes]
    return params, grads


def polyak_step(workload, tier):
    params, grads = _tensors(workload)
    opt = polyak.SGD(**workload.options)
    if workload.exclude_vectors:
        opt.exclude_from_weight_decay(var_list=[p for p in params if p.ndim == 1])
    opt.fused = tier != "reference"

    def step():
        with on_tier(tier):
            opt.apply(grads, params)

    step()
    if opt._last_tier != tier:
        print(f"note: {workload.key}: polyak {tier} asked, {opt._last_tier} ran", flush=True)
    return step


def copy_probe(bytes_per_copy=1 << 28):
    src = torch.empty(bytes_per_copy // 4, device=DEVICE)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src), 2 * bytes_per_copy


def _timed(step):
    """Seconds one call of ``step`` takes to finish on the device: CUDA events, or the wall
    clock when that is longer (host-bound steps) or there are no events (``--dry-run``)."""
    if DEVICE.type != "cuda":
        wall = time.perf_counter()
        step()
        return time.perf_counter() - wall
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    wall = time.perf_counter()
    start.record()
    step()
    end.record()
    torch.cuda.synchronize()
    return max(start.elapsed_time(end) / 1e3, time.perf_counter() - wall)


def timings(names, repeats, warmup, tiers=("triton", "foreach", "reference")):
    probe, probe_bytes = copy_probe()
    rows = []
    for key in names:
        workload = WORKLOADS[key]
        steps = {"polyak " + tier: polyak_step(workload, tier) for tier in tiers}
        steps["torch fused"] = contenders.torch_fused(workload, DEVICE.type)
        steps["torch foreach"] = contenders.torch_foreach(workload, DEVICE.type)
        steps["copy probe"] = probe
        samples = {name: [] for name in steps}
        for name, step in steps.items():
            for _ in range(warmup):
                step()
        for r in range(repeats):
            order = list(steps)[r % len(steps):] + list(steps)[:r % len(steps)]
            for name in order:
                samples[name].append(_timed(steps[name]))
        median = {name: statistics.median(s) for name, s in samples.items()}
        floor = bytes_moved(workload) / (probe_bytes / median.pop("copy probe"))
        for name, seconds in median.items():
            rows.append((key, name, seconds * 1e3, seconds / median["torch fused"], seconds / floor))
            print(f"time {key} {name:16} {seconds * 1e3:9.3f} ms  x{rows[-1][3]:6.2f} torch fused  "
                  f"x{rows[-1][4]:6.2f} floor", flush=True)
        rows.append((key, "floor", floor * 1e3, floor / median["torch fused"], 1.0))
    return rows


ROW_KEYS = {"parity": ("config", "dtype", "tier", "ran", "verdict"), "sync": ("config", "dtype", "tier", "ran", "verdict"),
            "timings": ("workload", "contender", "ms", "vs_torch_fused", "vs_floor")}


def _save(report, path):
    """The report so far as JSON (after every phase: a run cut short still leaves its results)."""
    if path:
        rows = {key: [dict(zip(names, r)) for r in report.get(key, [])] for key, names in ROW_KEYS.items()}
        with open(path, "w") as f:
            json.dump({**report, **rows}, f, indent=1)


def phases(args, report, deadline):
    """Runs each phase in turn while the budget lasts; returns whether a check failed."""
    def left(what):
        if time.perf_counter() < deadline:
            return True
        report.setdefault("skipped", []).append(what)
        print(f"skipped (--budget spent): {what}", flush=True)
        return False

    report["parity"], failed = parity(args.steps, report["seed"])
    _save(report, args.json)
    if DEVICE.type == "cuda" and left("sync"):
        report["sync"], sync_failed = sync_free()
        failed |= sync_failed
        _save(report, args.json)
    tiers = ("triton", "foreach", "reference") if DEVICE.type == "cuda" else ("foreach", "reference")
    report["timings"] = []
    for key in args.workloads:
        if left(f"timings {key}"):
            report["timings"] += timings([key], args.repeats, args.warmup, tiers)
            _save(report, args.json)
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    if not args.no_jax and left("jax branches"):
        report["jax_branches"] = jax_branches(args.dry_run, args.json and args.json.removesuffix(".json") + "-jax.json")
        _save(report, args.json)
    if not args.no_bench:
        from polyak.bench import harness

        report["bench"] = []
        for key in args.workloads:
            if left(f"bench {key}"):
                report["bench"] += harness.run([key], repeats=args.repeats, warmup=args.warmup,
                                               device=DEVICE.type)["workloads"]
                _save(report, args.json)
    _save(report, args.json)
    return failed


def print_tables(report):
    device = report["device"]
    tables = [("parity", f"Parity on {device} (seed {report['seed']})"), ("sync", f"Synchronisations in a step on {device}")]
    for key, title in tables:
        if report.get(key):
            print(f"\n## {title}\n")
            print("| config | dtype | tier asked | ran | result |\n|---|---|---|---|---|")
            for row in report[key]:
                print("| " + " | ".join(row) + " |")
    if report.get("timings"):
        print(f"\n## Step time on {device}\n")
        print("| workload | contender | ms | x torch fused | x floor |\n|---|---|---|---|---|")
        for key, name, ms, vs_fused, vs_floor in report["timings"]:
            print(f"| {key} | {name} | {ms:.3f} | {vs_fused:.2f} | {vs_floor:.2f} |")
    if report.get("bench"):
        from polyak.bench import harness

        print(f"\n## polyak bench --device {DEVICE.type} on {device}")
        for result in report["bench"]:
            print(harness.format_table(result))
    if report.get("jax_branches"):
        print(f"\n## JAX branches on {device}\n")
        print("\n".join(report["jax_branches"]))
    if report.get("skipped"):
        print(f"\nskipped, the budget spent: {', '.join(report['skipped'])}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--no-bench", action="store_true", help="skip `polyak bench --device cuda`")
    parser.add_argument("--no-jax", action="store_true", help="skip benchmarks/jax_branches.py")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds after which no new phase or workload starts (default 480)")
    parser.add_argument("--json", help="write the results here too, after every phase")
    parser.add_argument("--dry-run", action="store_true",
                        help="on the CPU, the Triton tier interpreted, no timings of it: checks this script")
    args = parser.parse_args(argv)
    global DEVICE
    if args.dry_run:
        DEVICE = torch.device("cpu")
        TRITON_ENV["POLYAK_TIER"] = "triton"
        os.environ["TRITON_INTERPRET"] = "1"  # read when Triton is first imported, by the first step
    elif not torch.cuda.is_available():
        print("No CUDA device: nothing to check.")
        return 2
    seed = args.seed if args.seed is not None else int(time.time() * 1e3) % (1 << 31)
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU (dry run)"
    print(f"device {device}, torch {torch.__version__}, polyak {polyak.__file__}, seed {seed}", flush=True)
    began = time.perf_counter()
    report = {"device": device, "torch": torch.__version__, "polyak": polyak.__file__, "seed": seed}
    failed = phases(args, report, began + args.budget)
    print_tables(report)
    print(f"\n{'FAILED' if failed else 'passed'} in {time.perf_counter() - began:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
