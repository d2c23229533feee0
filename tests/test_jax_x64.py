"""float64 under ``jax.jit``: JAX has float64 (and an int64 counter) only with
``jax_enable_x64``, a process-wide switch, so this runs in a subprocess."""

import pathlib
import subprocess
import sys

SCRIPT = """
import dataclasses, sys, warnings
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
warnings.filterwarnings("ignore", message="Gradients do not exist")
import reference, test_conformance
for scenario in test_conformance.JAX_GRID[::2]:
    reference.assert_same_trajectory(dataclasses.replace(scenario, dtype="float64"), rtol=2e-6, backend="jax")
print("agreed")
"""


def test_float64_grid_matches_keras_under_jax_jit_with_x64():
    code = SCRIPT.format(tests=str(pathlib.Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "agreed"
