"""``benchmarks/gpu_check.py`` stays runnable without a GPU: its ``--dry-run`` runs the parity
phase on the CPU (the Triton tier in Triton's interpreter) and must find every tier equal to
the reference, the float32 and float64 lines run by the tier they ask for."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_dry_run_checks_parity_and_writes_its_json(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("POLYAK_TIER", None)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--steps", "2",
                           "--workloads", "--no-bench", "--no-jax", "--seed", "7", "--json", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("passed")
    report = json.loads(out.read_text())
    assert report["polyak"].startswith(str(ROOT)), report["polyak"]
    rows = report["parity"]
    assert {row["tier"] for row in rows} == {"triton", "foreach"}
    assert all(row["verdict"] in ("bitwise", "close") for row in rows), rows
    assert len(rows) >= 40
    for row in rows:
        if row["dtype"] in ("float32", "float64") or (row["dtype"] == "float16" and row["tier"] == "triton"):
            assert row["ran"] == row["tier"], row
