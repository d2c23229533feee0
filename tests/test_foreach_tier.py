"""The foreach tier on CPU tensors (``POLYAK_TIER=foreach``): the reference's numbers, and a
step that is a handful of multi-tensor operations whatever the number of tensors.

Its operations are the ones it runs on any device (the tier has no per-device branch), so
what is counted here is what a CUDA step launches: each ``torch._foreach_*`` call is one
operation at the dispatcher, seen once by a ``TorchDispatchMode``.
"""

from collections import Counter

import numpy as np
import pytest

import optimizer_db as db
import polyak

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

CASES = ([(c, "float32") for c in db.KERNEL_GRID] + [(c, "float64") for c in db.KERNEL_GRID[::3]]
         + [(c, "float32") for c in db.configs("features") + db.GRID_PAIRWISE])


@pytest.mark.parametrize("config,dtype", CASES, ids=[f"{c.id}-{d}" for c, d in CASES])
def test_the_foreach_tier_equals_the_reference(config, dtype, monkeypatch):
    monkeypatch.setenv("POLYAK_TIER", "foreach")
    got, opt = db.run_on_tier(config, "torch", dtype, "cpu_fused")
    assert db.tier_that_ran(opt) == ("foreach" if db.fused_takes(config, "torch", dtype) else "reference")
    monkeypatch.delenv("POLYAK_TIER")
    want, _ = db.run_on_tier(config, "torch", dtype, "reference")
    db.assert_same_numbers(want, got, db.NORM_TOLERANCE[dtype] if config.clips_by_norm else (0, 0))


def test_clipping_by_value_keeps_nan_and_signed_zero(monkeypatch):
    def run():
        w = [torch.nn.Parameter(torch.zeros(6))]
        opt = db.use_tier(polyak.SGD(learning_rate=1.0, clipvalue=0.5), "cpu_fused")
        opt.apply([torch.tensor([np.nan, -0.0, 0.7, -3.0, np.inf, 0.25])], w)
        return opt, w[0].detach().numpy()

    monkeypatch.setenv("POLYAK_TIER", "foreach")
    opt, got = run()
    assert db.tier_that_ran(opt) == "foreach"
    monkeypatch.delenv("POLYAK_TIER")
    _, want = run()
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got).tolist() == np.signbit(want).tolist()


class Ops(TorchDispatchMode):
    """Counts the aten operations dispatched, by name."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


W1 = dict(momentum=0.9)
W3 = dict(momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=1.0, use_ema=True)


def _ops_per_step(options, n_tensors):
    weights = [torch.nn.Parameter(torch.randn(7, 3)) for _ in range(n_tensors)]
    opt = polyak.SGD(**options)
    opt.exclude_from_weight_decay(var_list=weights[::4])
    grads = [torch.randn(7, 3) for _ in weights]
    opt.apply(grads, weights)
    with Ops() as ops:
        opt.apply(grads, weights)
    assert db.tier_that_ran(opt) == "foreach"
    return ops.counts


@pytest.mark.parametrize("options,most", [(W1, 10), (W3, 40)], ids=["W1", "W3"])
def test_a_step_is_a_handful_of_multi_tensor_operations(options, most, monkeypatch):
    """At most ``most`` multi-tensor operations, and a few on 0-d tensors (advancing the
    iteration count; the global norm and its clipping factor, kept on the device), whatever the
    number of tensors."""
    monkeypatch.setenv("POLYAK_TIER", "foreach")
    few, many = _ops_per_step(options, 4), _ops_per_step(options, 40)
    assert few == many, f"an operation per tensor: {dict(few)} on 4 tensors, {dict(many)} on 40"
    foreach = sum(n for name, n in many.items() if name.startswith("_foreach"))
    assert 3 <= foreach <= most and sum(many.values()) - foreach <= 15, dict(many)
