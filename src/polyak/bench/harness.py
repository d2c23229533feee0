"""Run the contenders on the workloads, side by side, and tabulate median step times.

Every contender of a workload is set up first; then repetitions are
interleaved (one step of each, in turn) so that machine noise hits all alike.
The order rotates each repetition: no contender always runs just after the
same other one (whose idle threads may still be spinning on the cores). The
stream-bandwidth probe takes its turn among them, so the floor (the bytes a
step must move divided by the median measured bandwidth) is measured under the
same conditions as the steps. Keras on NumPy, whose full-size temporaries
disturb its neighbours, is timed alone after them (``SOLO``). Ratios are
taken within the run: to ``torch-fused`` and to that floor.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
import tracemalloc

from polyak.bench import spread
from polyak.bench.bandwidth import probe_for
from polyak.bench.contenders import CONTENDERS, Unavailable
from polyak.bench.workloads import WORKLOADS, bytes_moved
from polyak.tiers import background


def _peak_step_bytes(step):
    """Peak bytes allocated through NumPy/Python during one step (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


STREAM = "stream"  #: the bandwidth probe's place among the contenders

#: Timed on their own after the others: Keras on NumPy allocates and frees full-size
#: temporaries every step (gigabytes on W4), and that churn slows whatever runs next.
SOLO = {"keras-numpy"}


def _time(step, samples):
    start = time.perf_counter()
    step()
    samples.append(time.perf_counter() - start)


def run_workload(workload, contenders, repeats, warmup, probe, log=print, device="cpu"):
    steps, notes = {STREAM: probe}, {}
    for name in contenders:
        try:
            steps[name] = CONTENDERS[name](workload, device)
            for _ in range(warmup):
                steps[name]()
            if background.wait():  # polyak's warm-up steps ran while its kernel compiled: warm up on it
                for _ in range(warmup):
                    steps[name]()
        except Unavailable as why:
            notes[name] = str(why)
    times = {name: [] for name in steps}
    names = [name for name in steps if name not in SOLO]
    for repeat in range(repeats):
        turn = repeat % len(names)
        for name in names[turn:] + names[:turn]:
            _time(steps[name], times[name])
    for name in steps:
        if name in SOLO:
            for _ in range(repeats):
                _time(steps[name], times[name])
    bandwidth = probe.bandwidth(statistics.median(times.pop(STREAM)))
    floor = bytes_moved(workload) / bandwidth
    rows = {}
    reference = statistics.median(times["torch-fused"]) if "torch-fused" in times else None
    for name, samples in times.items():
        median = statistics.median(samples)
        rows[name] = {
            "ms": median * 1e3,
            "vs_torch_fused": median / reference if reference else None,
            "vs_floor": median / floor,
            "min_ms": min(samples) * 1e3,
            "max_ms": max(samples) * 1e3,
            "spread": spread.spread(samples),
        }
    if "polyak-numpy" in steps:
        state_bytes = 4 * workload.parameters * (4 if workload.options.get("use_ema") else 3)
        peak = _peak_step_bytes(steps["polyak-numpy"])
        rows["polyak-numpy"]["peak_temporary_bytes"] = peak
        rows["polyak-numpy"]["peak_temporary_vs_state"] = peak / state_bytes
    steps.clear()
    gc.collect()
    return {"workload": workload.key, "title": workload.title, "parameters": workload.parameters,
            "tensors": len(workload.shapes), "bandwidth_gb_s": bandwidth / 1e9, "floor_ms": floor * 1e3,
            "results": rows, "noisy": spread.noisy(times), "unavailable": notes}


def run(workloads=("W1", "W2", "W3", "W4"), contenders=None, repeats=15, warmup=3, log=print, device="cpu"):
    """Every workload on ``device`` ("cpu", or "cuda": PyTorch's and JAX's first GPU, and the
    stream probe there)."""
    contenders = list(contenders or CONTENDERS)
    probe = probe_for(device)
    report = {"machine": {**_machine(), "device": _device_name(device)}, "workloads": []}
    for key in workloads:
        result = run_workload(WORKLOADS[key], contenders, repeats, warmup, probe, log, device)
        report["workloads"].append(result)
        log(format_table(result))
    return report


def _device_name(device):
    if device == "cpu":
        return platform.processor() or platform.machine()
    import torch

    return torch.cuda.get_device_name()


def _machine():
    import os
    from importlib import metadata

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    for package in ("numpy", "numba", "torch", "jax", "optax", "keras"):
        try:  # the installed version, without importing the framework
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info


def format_table(result):
    lines = [f"\n{result['workload']}: {result['title']} — {result['tensors']} tensors, "
             f"{result['parameters'] / 1e6:.1f}M parameters, floor {result['floor_ms']:.2f} ms "
             f"(stream {result['bandwidth_gb_s']:.1f} GB/s)",
             f"  {'contender':<16}{'ms':>9}{'× torch-fused':>15}{'× floor':>10}"]
    for name, row in result["results"].items():
        vs_torch = f"{row['vs_torch_fused']:.2f}" if row["vs_torch_fused"] else "—"
        lines.append(f"  {name:<16}{row['ms']:>9.2f}{vs_torch:>15}{row['vs_floor']:>10.2f}")
        if "peak_temporary_bytes" in row:
            lines.append(f"  {'':<16}peak temporaries {row['peak_temporary_bytes'] / 1e6:.1f} MB "
                         f"({100 * row['peak_temporary_vs_state']:.1f}% of params + grads + state)")
    for name, why in result["unavailable"].items():
        lines.append(f"  {name:<16}— ({why})")
    for name, value in result["noisy"].items():
        row = result["results"][name]
        lines.append(spread.warning(name, row["min_ms"], row["max_ms"], value))
    return "\n".join(lines)
