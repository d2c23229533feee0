"""The ``skip_nonfinite`` guard looks at every value the step computes from the gradients
(``polyak.core.nonfinite``), not only at the gradients: a finite gradient of about 2e19 makes a
float32 norm inf, a loss scale below 1 can make a divided gradient inf, an accumulated sum can
overflow. Such a step is skipped on every tier and face, with the reference's numbers; a
``LossScaleOptimizer`` keeps Keras's guard on the gradients as given."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported (see test_triton_tier)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import optimizer_db as db  # noqa: E402
import polyak  # noqa: E402

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

HUGE = 2e19  #: finite in float32; its square (4e38) is not
SHAPES = [(3, 5), (1100,), (7,)]
#: name -> (options, {step: (tensor, element, value)}, the steps skipped): values that overflow
#: in the norms, the loss scale's division, the accumulated sum (step 3 accumulates 3e38, step 4
#: would make the sum inf)
OVERFLOWS = {
    "global_clipnorm": (dict(momentum=0.9, global_clipnorm=1.0), {2: (1, 1099, HUGE)}, [2]),
    "clipnorm": (dict(momentum=0.9, nesterov=True, clipnorm=0.5, weight_decay=0.1), {2: (0, 3, -HUGE)}, [2]),
    "loss_scale": (dict(momentum=0.9, loss_scale_factor=1e-30, clipvalue=0.5), {3: (2, 0, 1e10)}, [3]),
    "accumulated": (dict(momentum=0.5, gradient_accumulation_steps=3), {3: (1, 5, 3e38), 4: (1, 5, 3e38)}, [4]),
}
#: (tier, backend, POLYAK_TIER): every tier, the reference on both array kinds
TIERS = [("reference", "numpy", None), ("reference", "torch", None), ("cpu_fused", "numpy", None),
         ("cpu_fused", "torch", None), ("foreach", "torch", "foreach"), ("triton", "torch", "triton")]


def _gradients(name, steps=7):
    """Gradients on a grid of halves (sums of their squares are exact in any order, so norms
    agree bit for bit across tiers), with ``OVERFLOWS[name]``'s values put in."""
    rng = np.random.default_rng(3)
    out = []
    for step in range(steps):
        grads = [(rng.integers(-4, 5, size=s) * 0.5).astype(np.float32) for s in SHAPES]
        if step in OVERFLOWS[name][1]:
            t, i, value = OVERFLOWS[name][1][step]
            grads[t].flat[i] = value
        out.append(grads)
    return out


def _weights():
    rng = np.random.default_rng(0)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def _run(name, tier, backend):
    weights = _weights()
    weights = [torch.nn.Parameter(torch.from_numpy(w)) for w in weights] if backend == "torch" else weights
    opt = polyak.SGD(learning_rate=0.05, skip_nonfinite=True, **OVERFLOWS[name][0])
    opt.fused = tier != "reference"
    states, ran = [], []
    for grads in _gradients(name):
        opt.apply([torch.from_numpy(g) for g in grads] if backend == "torch" else grads, weights)
        states.append(db.state(opt, weights))
        ran.append(opt._last_tier)
    return states, ran, opt


@pytest.mark.parametrize("name", sorted(OVERFLOWS))
@pytest.mark.parametrize("tier,backend,forced", TIERS, ids=[f"{t}-{b}" for t, b, _ in TIERS])
def test_an_overflowing_step_is_skipped_on_every_tier_with_the_references_numbers(tier, backend, forced, name,
                                                                                  monkeypatch):
    if forced:
        monkeypatch.setenv("POLYAK_TIER", forced)
    states, ran, opt = _run(name, tier, backend)
    assert set(ran) == {tier}
    bad = OVERFLOWS[name][2]
    assert int(opt.skipped_steps.numpy()) == len(bad)
    assert opt._iterations.host == 7 - len(bad)  # the raw count: only the steps that ran
    names = ["w0", "w1", "w2"] + [v.name for v in opt.variables]
    for step in bad:
        for k, (before, after) in enumerate(zip(states[step - 1], states[step])):
            if names[k] != "skipped_steps":
                np.testing.assert_array_equal(after, before, err_msg=f"step {step}: {names[k]}")
    for entry in states[-1]:
        assert np.all(np.isfinite(entry))
    assert not np.array_equal(states[-1][0], states[bad[-1]][0])  # later steps proceed
    monkeypatch.delenv("POLYAK_TIER", raising=False)
    want, _, _ = _run(name, "reference", backend)  # the reference on the same arrays
    # bit for bit, but for the CPU kernel on torch tensors with norm clipping: it computes the
    # clipping factor in NumPy and lands within an ulp of torch's reference (as in test_tiers)
    by_norm = "clipnorm" in name and (tier, backend) == ("cpu_fused", "torch")
    for step, (w, g) in enumerate(zip(want, states)):
        db.assert_same_numbers([w], [g], db.NORM_TOLERANCE["float32"] if by_norm else (0, 0),
                               what=f"{tier} step {step}")


@pytest.mark.parametrize("clip", ["global_clipnorm", "clipnorm"])
def test_the_torch_face_skips_an_overflowing_norm(clip):
    import polyak.torch

    w = torch.nn.Parameter(torch.ones(3))
    opt = polyak.torch.SGD([w], lr=0.1, momentum=0.9, skip_nonfinite=True, **{clip: 1.0})
    w.grad = torch.ones(3)
    opt.step()
    before = w.detach().clone(), opt.state[w]["momentum"].clone()
    w.grad = torch.full((3,), HUGE)
    opt.step()
    assert torch.equal(w.detach(), before[0]) and torch.equal(opt.state[w]["momentum"], before[1])
    assert int(opt.state[w]["skipped_steps"]) == 1 and int(opt.state[w]["step"]) == 1
    w.grad = torch.ones(3)
    opt.step()
    assert torch.isfinite(w).all() and not torch.equal(w.detach(), before[0])


@pytest.mark.parametrize("clip", ["global_clipnorm", "clipnorm"])
def test_the_optax_face_skips_an_overflowing_norm_under_jit(clip):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    import optax

    import polyak.optax

    tx = polyak.optax.sgd(learning_rate=0.1, momentum=0.9, skip_nonfinite=True, **{clip: 1.0})
    params = {"w": jnp.ones(3, jnp.float32)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for g in (1.0, HUGE, 1.0):
        updates, state = update({"w": jnp.full(3, g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        history.append((np.asarray(params["w"]), np.asarray(state.momentums["w"])))
    np.testing.assert_array_equal(history[1][0], history[0][0])
    np.testing.assert_array_equal(history[1][1], history[0][1])
    assert int(state.skipped) == 1 and int(state.iteration) == 2
    assert np.all(np.isfinite(history[2][0])) and not np.array_equal(history[2][0], history[0][0])


def _loss_scaled(inner_skips):
    weights = [np.ones(4, np.float32)]
    inner = polyak.SGD(learning_rate=0.1, momentum=0.9, global_clipnorm=1.0, skip_nonfinite=inner_skips)
    opt = polyak.LossScaleOptimizer(inner, initial_scale=2.0, dynamic_growth_steps=100)
    for g in (1.0, HUGE * 2.0, 1.0):  # the scaled gradient; unscaled, the middle one is HUGE
        opt.apply([np.full(4, g, np.float32)], weights)
    return opt, weights


def test_a_loss_scale_optimizer_keeps_keras_guard_on_the_given_gradients():
    """Keras's ``check_finite`` looks at the gradients as given: finite here, so the inner step
    runs and its global norm's overflow makes the weights NaN, as Keras's do."""
    opt, weights = _loss_scaled(False)
    assert np.isnan(weights[0]).all()
    assert float(opt.dynamic_scale.numpy()) == 2.0 and int(db.to_numpy(opt.iterations)) == 3


def test_a_loss_scale_optimizer_over_skip_nonfinite_skips_an_overflowing_norm():
    opt, weights = _loss_scaled(True)
    assert np.all(np.isfinite(weights[0])) and np.all(np.isfinite(opt.inner_optimizer.momentums[0].numpy()))
    assert int(opt.inner_optimizer.skipped_steps.numpy()) == 1 and int(db.to_numpy(opt.iterations)) == 2
    assert float(opt.dynamic_scale.numpy()) == 2.0  # the scale saw finite gradients


def test_the_skipped_count_saturates_as_the_iteration_count_does():
    """One count for every guard (``nonfinite.count_skipped``, the backend's ``increment``):
    under JAX without x64 the int32 count stops at its largest value instead of wrapping."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    import polyak.optax

    if jax.config.jax_enable_x64:
        pytest.skip("the int32 count is JAX's without x64")
    top = np.iinfo(np.int32).max
    tx = polyak.optax.sgd(learning_rate=0.1, momentum=0.9, global_clipnorm=1.0, skip_nonfinite=True)
    params = {"w": jnp.ones(3, jnp.float32)}
    state = tx.init(params)._replace(skipped=jnp.asarray(top - 1, jnp.int32))
    update = jax.jit(tx.update)
    for _ in range(2):
        _, state = update({"w": jnp.full(3, HUGE, jnp.float32)}, state, params)
    assert state.skipped.dtype == jnp.int32 and int(state.skipped) == top
