"""No host synchronisation inside a step off the CPU, shown on ``meta`` tensors.

``meta`` tensors take the branch CUDA tensors take (a device other than the CPU: the foreach
tier, or the reference step with ``opt.fused = False``), and they have no data: reading one
back (``.item()``, ``bool(t)``, ``.cpu()``) raises. A ``TorchDispatchMode`` records every aten
operation of a step, so a step here is exactly what a CUDA step launches, and any operation on
a CPU tensor (a host-to-device copy, a CPU scalar) or ``_local_scalar_dense`` would show.
"""

from collections import Counter

import numpy as np
import pytest

import polyak

torch = pytest.importorskip("torch")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

W1 = dict(momentum=0.9)
W3 = dict(momentum=0.9, nesterov=True, weight_decay=0.01, global_clipnorm=1.0, use_ema=True)
#: configurations whose every kind of call (accumulating, updating, overwriting) runs within 4 steps
FEATURES = {
    "accumulation": dict(momentum=0.9, gradient_accumulation_steps=2, loss_scale_factor=3.0),
    "ema_overwrite": dict(momentum=0.9, use_ema=True, ema_overwrite_frequency=2, weight_decay=0.1),
    "clipnorm": dict(clipnorm=1.0, nesterov=True, momentum=0.5),
    "clipvalue": dict(clipvalue=0.1, learning_rate=lambda: 0.05),
    "schedule": dict(learning_rate=polyak.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), momentum=0.9),
    "schedule-cycle": dict(learning_rate=polyak.optimizers.schedules.PolynomialDecay(0.1, 3, cycle=True),
                           gradient_accumulation_steps=2, weight_decay=0.1),
}
#: the reference step only: a step the gradients may skip, decided on the device
GUARDED = {
    "skip_nonfinite": dict(momentum=0.9, skip_nonfinite=True, gradient_accumulation_steps=2, use_ema=True,
                           ema_overwrite_frequency=3),
}


class Ops(TorchDispatchMode):
    """Counts the aten operations dispatched, by name, and keeps those that touch the CPU."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.on_cpu = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] += 1
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors) or name == "_local_scalar_dense":
            self.on_cpu.append(str(func))
        return out


def _meta_weights(n):
    shapes = [(7, 3), (5,), (2, 3, 4), (1,)]
    return [torch.nn.Parameter(torch.empty(shapes[i % len(shapes)], device="meta")) for i in range(n)]


def _counted_steps(options, n_tensors, fused=True, steps=4):
    """The operations of each of ``steps`` steps after the first (which builds the state)."""
    weights = _meta_weights(n_tensors)
    grads = [torch.empty_like(w) for w in weights]
    opt = polyak.SGD(**options)
    opt.fused = fused
    if options.get("weight_decay"):
        opt.exclude_from_weight_decay(var_list=weights[::4])
    opt.apply(grads, weights)
    counted = []
    for _ in range(steps):
        with Ops() as ops:
            opt.apply(grads, weights)
        counted.append(ops)
        assert opt._last_tier == ("foreach" if fused else "reference")
    return counted, opt


@pytest.mark.parametrize("options,most", [(W1, 10), (W3, 40)], ids=["W1", "W3"])
def test_a_step_is_a_few_multi_tensor_operations_and_reads_nothing_back(options, most):
    (few,), _ = _counted_steps(options, 5, steps=1)
    (many,), _ = _counted_steps(options, 161, steps=1)
    assert few.counts == many.counts, f"an operation per tensor: {dict(few.counts)} on 5, {dict(many.counts)} on 161"
    multi = sum(n for name, n in many.counts.items() if name.startswith("_foreach"))
    assert multi <= most, dict(many.counts)
    # the rest are on 0-d tensors: the count's increment, the global norm and its factor
    assert sum(many.counts.values()) - multi <= 15, dict(many.counts)
    assert many.on_cpu == []


#: skip_nonfinite runs the reference step only (the foreach tier declines it)
CASES = [(name, fused) for name in sorted(FEATURES) for fused in (True, False)] + [(n, False) for n in GUARDED]


@pytest.mark.parametrize("name,fused", CASES, ids=[f"{n}-{'foreach' if f else 'reference'}" for n, f in CASES])
def test_no_step_reads_the_device_back(name, fused):
    options = {**FEATURES, **GUARDED}[name]
    counted, opt = _counted_steps(options, 6, fused=fused)
    for ops in counted:
        # the reference too computes a schedule on the host count, its rate then made on the device
        assert ops.on_cpu == [], ops.on_cpu
        assert ops.counts["_local_scalar_dense"] == 0
    if name not in GUARDED:
        assert opt._iterations.known_host == 5


def test_the_loss_scale_optimizer_reads_nothing_back_on_meta():
    weights = _meta_weights(4)
    grads = [torch.empty_like(w) for w in weights]
    opt = polyak.optimizers.LossScaleOptimizer(polyak.SGD(momentum=0.9, gradient_accumulation_steps=2))
    opt.apply(grads, weights)
    for _ in range(3):
        with Ops() as ops:
            opt.apply(grads, weights)
        assert ops.on_cpu == [] and ops.counts["_local_scalar_dense"] == 0


def test_meta_tensors_take_the_foreach_tier():
    _, opt = _counted_steps(W1, 3, steps=1)
    assert opt._last_tier == "foreach"


# --- the host copy of the iteration count ----------------------------------------------------
def _in_sync(opt):
    count = opt._iterations
    known = count.known_host
    assert known is None or known == int(count.numpy())
    assert count.host == int(count.numpy())


@pytest.mark.parametrize("fused", [True, False])
def test_the_host_count_follows_every_write(fused, monkeypatch, tmp_path):
    monkeypatch.setenv("POLYAK_TIER", "foreach")
    weights = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    grads = [torch.full((3,), 0.5), torch.full((2, 2), 0.25)]
    opt = polyak.SGD(momentum=0.9, gradient_accumulation_steps=3, use_ema=True, ema_overwrite_frequency=2)
    opt.fused = fused
    for _ in range(4):
        opt.apply(grads, weights)
        _in_sync(opt)
        assert opt._iterations.known_host is not None  # counted without reading the device
    saved = [v.numpy() for v in opt.variables]
    opt.apply(grads, weights)
    assert opt._iterations.host == 5
    opt.set_weights(saved)
    _in_sync(opt)
    assert opt._iterations.known_host == 4
    store = {}
    opt.save_own_variables(store)
    opt.apply(grads, weights)
    opt.load_own_variables(store)
    assert opt._iterations.known_host == 4
    opt._iterations.assign(torch.tensor(7))  # a device value would leave the copy unknown; CPU is read
    assert opt._iterations.known_host == 7
    opt.apply(grads, weights)
    _in_sync(opt)


def test_skipped_steps_leave_the_host_count_to_the_device():
    weights = [torch.nn.Parameter(torch.ones(3))]
    opt = polyak.SGD(momentum=0.9, skip_nonfinite=True, gradient_accumulation_steps=2)
    for g in [0.5, np.nan, 0.5, np.inf, 0.5]:
        opt.apply([torch.full((3,), g)], weights)
        _in_sync(opt)
    assert opt._iterations.host == 3 and int(opt.skipped_steps.numpy()) == 2


def test_a_loss_scale_optimizer_keeps_its_inner_count_right():
    weights = [torch.nn.Parameter(torch.ones(3))]
    inner = polyak.SGD(momentum=0.9, gradient_accumulation_steps=2)
    opt = polyak.optimizers.LossScaleOptimizer(inner)
    for g in [0.5, np.inf, 0.5, 0.5]:
        opt.apply([torch.full((3,), g)], weights)
        _in_sync(inner)
    assert inner._iterations.host == 3


def test_stateless_apply_reads_the_count_it_is_given():
    """The host copy is ``apply``'s: ``stateless_apply`` decides from the values it is given."""
    w = np.ones(3, np.float32)
    opt = polyak.SGD(learning_rate=1.0, gradient_accumulation_steps=2)
    opt.build([w])
    values = [v.numpy() for v in opt.variables]
    position = [v.path for v in opt.variables].index(opt._iterations.path)
    g = [np.full(3, 0.5, np.float32)]
    accumulating, _ = opt.stateless_apply(values, g, [w])
    values[position] = np.int64(1)
    updating, _ = opt.stateless_apply(values, g, [w])
    np.testing.assert_array_equal(accumulating[0], w)
    np.testing.assert_array_equal(updating[0], w - 0.25)
    assert opt._iterations.known_host == 0
