"""16-bit weights: Keras's numbers by default, float32 master weights on request."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest

import optimizer_db as db
import polyak
from reference import assert_same_trajectory
from reference import scenario as scenario_of

BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("config", db.configs("16-bit"), ids=lambda c: c.name)
def test_16_bit_weights_match_keras(dtype, config, backend):
    """NumPy and torch round every operation to the 16-bit dtype, as Keras does: bit for bit, but
    for torch's bfloat16 sums (a norm), accumulated in float32 and rounded once: one ulp. XLA on a
    CPU computes 16-bit chains in float32 and rounds once, so JAX is within a few ulps."""
    pytest.importorskip(backend if backend != "numpy" else "numpy")
    scenario = scenario_of(config.with_options(learning_rate=0.05), dtype=dtype, steps=6)
    rtol = {"numpy": 0, "torch": 1e-2 if dtype == "bfloat16" and config.clips_by_norm else 0,
            "jax": 2e-2 if dtype == "bfloat16" else 4e-3}[backend]
    assert_same_trajectory(dataclasses.replace(scenario), rtol=rtol, backend=backend)


def _bf16(backend, values):
    if backend == "torch":
        import torch

        return torch.tensor(values, dtype=torch.bfloat16)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(values, dtype=jnp.bfloat16)
    return np.array(values, BF16)


def _small_updates(master_weights, backend="numpy", steps=1000):
    w = polyak.Variable(_bf16(backend, [1.0]), dtype="bfloat16", name="w")
    opt = polyak.SGD(learning_rate=1e-4, master_weights=master_weights)
    for _ in range(steps):
        opt.apply([_bf16(backend, [1.0])], [w])
    return float(np.asarray(w.numpy(), np.float32)[0]), opt


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_master_weights_keep_updates_that_bfloat16_rounds_away(backend):
    pytest.importorskip(backend)
    without, _ = _small_updates(False, backend, steps=200)
    assert without == 1.0  # 1 - 1e-4 rounds back to 1 in bfloat16, every step
    with_master, opt = _small_updates(True, backend)
    expected = np.float32(1.0)
    for _ in range(1000):  # the same descent carried out in float32
        expected = expected - np.float32(1.0) * np.float32(1e-4)
    master = opt.variables[-1]
    assert master.name == "w_master" and master.dtype == "float32"
    np.testing.assert_allclose(master.numpy(), [expected], rtol=1e-6)
    assert abs(with_master - float(np.array(expected).astype(BF16))) <= 2 ** -8
    assert abs(with_master - 0.9) <= 2 ** -8  # moved by the expected 0.1, to bfloat16 precision


def test_master_weights_state_is_float32_and_a_no_op_for_float32_weights():
    w16 = polyak.Variable(np.ones(3, np.float16), dtype="float16", name="h")
    w32 = np.ones(3, np.float32)
    opt = polyak.SGD(momentum=0.9, use_ema=True, master_weights=True)
    opt.apply([np.ones(3, np.float16), np.ones(3, np.float32)], [w16, w32])
    names = {v.name: v.dtype for v in opt.variables}
    assert names["h_momentum"] == "float32" and names["h_average"] == "float32" and names["h_master"] == "float32"
    assert "variable_1_master" not in names
    plain = np.ones(3, np.float32)
    polyak.SGD(momentum=0.9, use_ema=True).apply([np.ones(3, np.float32)], [plain])
    np.testing.assert_array_equal(w32, plain)
    assert opt.get_config()["master_weights"] is True
    assert "master_weights" not in polyak.SGD().get_config()


def test_master_weights_stateless_equals_apply():
    rng = np.random.default_rng(0)
    w = polyak.Variable(rng.normal(size=4).astype(BF16), dtype=BF16, name="w")
    stateful = polyak.SGD(0.01, momentum=0.9, master_weights=True)
    pure = polyak.SGD(0.01, momentum=0.9, master_weights=True)
    pure.build([polyak.Variable(w.numpy(), dtype=BF16, name="w")])
    params, values = [w.numpy()], [v.numpy() for v in pure.variables]
    for _ in range(5):
        g = rng.normal(size=4).astype(BF16)
        params, values = pure.stateless_apply(values, [g], params)
        stateful.apply([g], [w])
        np.testing.assert_array_equal(params[0], w.numpy())
