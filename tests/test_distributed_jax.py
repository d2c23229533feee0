"""JAX sharding: a jitted ``stateless_apply`` on 4 host CPU devices (see ``jax_sharding_check.py``).

The device count is fixed when JAX starts, so the check runs in a subprocess with ``XLA_FLAGS``.
"""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("jax")

HERE = pathlib.Path(__file__).parent


def test_jit_stateless_apply_on_four_sharded_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(HERE / "jax_sharding_check.py")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "state entries sharded like their weights" in result.stdout
    assert "data parallel" in result.stdout
