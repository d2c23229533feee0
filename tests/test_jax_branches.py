"""``POLYAK_JAX_BRANCHES``: a traced step branches by ``lax.cond`` or by a device-side select.

For every configuration of the test database that branches under ``jax.jit`` (gradient
accumulation, the EMA overwrite, ``skip_nonfinite``, ``LossScaleOptimizer``,
``overwrite_with_gradient`` with accumulation, and ``polyak.optax.sgd`` with accumulation),
both settings give the same state entries bit for bit after every jitted step, and those
agree with the eager reference (``apply`` on JAX Variables, each branch picked on the host).
The jaxpr of a jitted step has a ``cond`` under "cond" and none under "select".

Every run meets a NaN gradient. Where a guard is (``skip_nonfinite``, ``LossScaleOptimizer``)
it comes on ``db.POISONED_STEP`` and is skipped, so every step's state is finite; elsewhere it
propagates (a global norm turns every weight into NaN), so it comes on the last step, after
six finite ones, and that step is checked for the propagation. A comparison of NaN with NaN
never stands in for one of numbers: every entry compared has finite elements.
"""

import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import optimizer_db as db  # noqa: E402
import polyak  # noqa: E402
from polyak.backends import jax_backend  # noqa: E402

MODES = ("cond", "select")
STEPS = 7  # a poisoned step (db.POISONED_STEP) with skip_nonfinite, two overwrites, two accumulation cycles


def _branches(config):
    o = config.options
    return bool(o.get("gradient_accumulation_steps") or o.get("skip_nonfinite")
                or (o.get("use_ema") and o.get("ema_overwrite_frequency")))


#: (id, config, dtype, wrapper): every configuration of the database that runs on JAX and
#: branches: the grid's pairwise cover and the schedules with accumulation (both jitted by
#: test_conformance), polyak's own options, 16-bit weights; the guarded configurations with
#: ``skip_nonfinite``, and the loss-scaled ones in a ``LossScaleOptimizer``.
CASES = (
    [(c.id, c, "float32", None) for c in db.GRID_PAIRWISE if _branches(c)]
    + [(c.id, c, "float32", None) for c in db.configs("schedules") if _branches(c)][::3]
    + [(c.id, c.with_options(skip_nonfinite=True), "float32", None) for c in db.configs("nonfinite")]
    + [(c.id, c, "float32", "loss_scale") for c in db.configs("loss-scaled")]
    + [(c.id, c, "bfloat16" if c.options.get("master_weights") else "float32", None)
       for c in db.configs("features") if _branches(c)]
    + [(c.id, c, "float16", None) for c in db.configs("16-bit") if _branches(c)]
    + [("overwrite-with-gradient+accumulation", db.config("loss-scaled:accumulation"), "float32", "overwrite")]
)


@pytest.fixture(autouse=True)
def _quiet_missing_gradient_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        yield


def _optimizer(config, dtype, wrapper):
    weights = db.weights_for(config, "jax", dtype)
    if wrapper == "overwrite":
        weights[0].overwrite_with_gradient = True
    opt = config.optimizer(polyak, weights)
    if wrapper == "loss_scale":
        opt = polyak.optimizers.LossScaleOptimizer(opt, dynamic_growth_steps=2)
    opt.build(weights)
    return opt, weights


def _guarded(config, wrapper):
    return bool(config.options.get("skip_nonfinite")) or wrapper == "loss_scale"


def nan_step(config, wrapper):
    """The step whose first gradient holds a NaN: ``db.POISONED_STEP`` where a guard skips it,
    the last step where it propagates (so the steps before it compare finite numbers)."""
    return db.POISONED_STEP if _guarded(config, wrapper) else STEPS - 1


def _gradients(config, dtype, wrapper):
    """The database's gradients, with a NaN in the first gradient on :func:`nan_step`."""
    grads = list(db.gradient_stream(config.with_options(skip_nonfinite=False), "jax", dtype, STEPS))
    poisoned = grads[nan_step(config, wrapper)]
    poisoned[0] = poisoned[0].ravel().at[0].set(jnp.nan).reshape(poisoned[0].shape)
    return grads


def _jitted_step(opt):
    """A new jitted function: traced afresh, so it reads the setting now in force."""
    return jax.jit(lambda values, grads, params: opt.stateless_apply(values, grads, params))


def jitted_run(monkeypatch, mode, config, dtype, wrapper):
    monkeypatch.setenv(jax_backend.BRANCHES_VARIABLE, mode)
    opt, weights = _optimizer(config, dtype, wrapper)
    step = _jitted_step(opt)
    params, values = [w.value for w in weights], [v.value for v in opt.variables]
    history = []
    for grads in _gradients(config, dtype, wrapper):
        params, values = step(values, grads, params)
        history.append([db.to_numpy(x) for x in list(params) + list(values)])
    return history


def eager_run(config, dtype, wrapper):
    opt, weights = _optimizer(config, dtype, wrapper)
    history = []
    for grads in _gradients(config, dtype, wrapper):
        opt.apply(grads, weights)
        history.append(db.state(opt, weights))
    return history


def _has_finite_elements(x):
    return x.dtype.kind not in "fc" or x.size == 0 or bool(np.isfinite(x.astype(np.float64)).any())


def assert_identical(want, got, what, propagated_at=None):
    """Bit for bit, NaNs in the same places; every entry with finite elements, except on step
    ``propagated_at``, where an unguarded NaN must show (some entry holds one)."""
    for step, (a, b) in enumerate(zip(want, got, strict=True)):
        assert len(a) == len(b)
        for k, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and x.shape == y.shape, f"{what} step {step}: entry {k}"
            assert np.array_equal(x, y, equal_nan=True), f"{what} step {step}: entry {k}: {x} != {y}"
            if step != propagated_at:
                assert _has_finite_elements(x), f"{what} step {step}: entry {k} has no finite element: {x}"
        if step == propagated_at:
            assert any(np.isnan(x.astype(np.float64)).any() for x in a if x.dtype.kind == "f"), \
                f"{what} step {step}: the NaN gradient left no NaN"


def assert_close(want, got, what):
    """XLA fuses multiply-adds that eager JAX rounds twice: a few ulps of the weights' dtype."""
    for step, (a, b) in enumerate(zip(want, got, strict=True)):
        for k, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and x.shape == y.shape, f"{what} step {step}: entry {k}"
            tolerance = 1e-6 if x.dtype == np.float32 else 1e-2
            np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(x, np.float64), rtol=tolerance,
                                       atol=tolerance, err_msg=f"{what} step {step}: entry {k}")


@pytest.mark.parametrize("case_id,config,dtype,wrapper", CASES, ids=[c[0] for c in CASES])
def test_both_settings_give_the_same_numbers(monkeypatch, case_id, config, dtype, wrapper):
    by_cond = jitted_run(monkeypatch, "cond", config, dtype, wrapper)
    by_select = jitted_run(monkeypatch, "select", config, dtype, wrapper)
    propagated_at = None if _guarded(config, wrapper) else nan_step(config, wrapper)
    assert_identical(by_cond, by_select, f"{case_id}: select against cond", propagated_at)
    assert_close(eager_run(config, dtype, wrapper), by_select, f"{case_id}: jitted against eager")


def primitives(jaxpr):
    """The names of every primitive in ``jaxpr`` and in the jaxprs nested in its equations."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):  # a Jaxpr, or a ClosedJaxpr's
                    names |= primitives(inner)
    return names


def _traced_primitives(monkeypatch, mode, config, dtype, wrapper):
    monkeypatch.setenv(jax_backend.BRANCHES_VARIABLE, mode)
    opt, weights = _optimizer(config, dtype, wrapper)
    grads = _gradients(config, dtype, wrapper)[0]
    closed = jax.make_jaxpr(_jitted_step(opt))([v.value for v in opt.variables], grads, [w.value for w in weights])
    return primitives(closed.jaxpr)


@pytest.mark.parametrize("case_id,config,dtype,wrapper", CASES[::2], ids=[c[0] for c in CASES[::2]])
def test_select_leaves_no_cond_in_the_jaxpr(monkeypatch, case_id, config, dtype, wrapper):
    assert "cond" in _traced_primitives(monkeypatch, "cond", config, dtype, wrapper)
    assert "cond" not in _traced_primitives(monkeypatch, "select", config, dtype, wrapper)


@pytest.mark.parametrize("wrapper,config", [
    (None, db.config("features:skip-nonfinite").with_options(ema_overwrite_frequency=2)),
    ("loss_scale", db.config("loss-scaled:accumulation+ema")),
], ids=["skip_nonfinite", "loss_scale"])
def test_an_all_nan_gradient_moves_nothing_under_select(monkeypatch, wrapper, config):
    """The unpicked branch is the step on NaN gradients: NaN everywhere, and none of it is kept."""
    monkeypatch.setenv(jax_backend.BRANCHES_VARIABLE, "select")
    opt, weights = _optimizer(config, "float32", wrapper)
    step = _jitted_step(opt)
    params, values = [w.value for w in weights], [v.value for v in opt.variables]
    for grads in list(db.gradient_stream(config, "jax", "float32", 3)):
        params, values = step(values, grads, params)
    poisoned = [jnp.full_like(p, jnp.nan) for p in params]
    new_params, new_values = step(values, poisoned, params)
    moved = {v.name for v, a, b in zip(opt.variables, values, new_values) if not np.array_equal(a, b)}
    assert moved == ({"skipped_steps"} if wrapper is None else {"step_counter", "dynamic_scale"})
    for a, b in zip(params, new_params):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("options", [
    dict(learning_rate=0.1, momentum=0.5, gradient_accumulation_steps=2, clipvalue=0.3),
    dict(learning_rate=0.05, momentum=0.9, gradient_accumulation_steps=3, use_ema=True, ema_overwrite_frequency=2,
         skip_nonfinite=True),
], ids=["accumulation", "accumulation-ema-overwrite-skip"])
def test_the_optax_face_gives_the_same_numbers(monkeypatch, options):
    optax = pytest.importorskip("optax")
    from polyak.optax import sgd

    rng = np.random.default_rng(3)
    start = {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "bias": jnp.zeros(4, jnp.float32)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), start) for _ in range(STEPS)]
    grads[db.POISONED_STEP]["bias"] = grads[db.POISONED_STEP]["bias"].at[0].set(jnp.nan)

    def run(mode, jit):
        monkeypatch.setenv(jax_backend.BRANCHES_VARIABLE, mode)
        tx = sgd(**options)
        update = jax.jit(lambda g, s, p: tx.update(g, s, p)) if jit else tx.update
        params, state, history = start, tx.init(start), []
        for g in grads:
            updates, state = update(g, state, params)
            params = optax.apply_updates(params, updates)
            history.append([db.to_numpy(x) for x in jax.tree.leaves((params, state))])
        return history, update

    (by_cond, _), (by_select, jitted) = run("cond", True), run("select", True)
    assert_identical(by_cond, by_select, "optax: select against cond")
    assert_close(run("cond", False)[0], by_select, "optax: jitted against eager")
    closed = jax.make_jaxpr(jitted)(grads[0], sgd(**options).init(start), start)
    assert "cond" not in primitives(closed.jaxpr)


@pytest.mark.parametrize("value", ["Select", "where", "0", " cond"])
def test_a_bad_setting_is_a_clear_error(monkeypatch, value):
    """Raised when a step is traced (an eager step's predicates are on the host: it reads no setting)."""
    monkeypatch.setenv(jax_backend.BRANCHES_VARIABLE, value)
    opt, weights = _optimizer(db.config("loss-scaled:accumulation"), "float32", None)
    before = db.state(opt, weights)
    with pytest.raises(ValueError, match=f"`POLYAK_JAX_BRANCHES` must be one of 'cond', 'select', 'auto'. "
                                         f"Received: POLYAK_JAX_BRANCHES={value!r}"):
        _jitted_step(opt)([v.value for v in opt.variables], [jnp.ones_like(w.value) for w in weights],
                          [w.value for w in weights])
    assert_identical([before], [db.state(opt, weights)], "after the error")


def test_auto_selects_on_gpus_only(monkeypatch):
    monkeypatch.setenv(jax_backend.BRANCHES_VARIABLE, "auto")
    assert jax_backend.branch_mode("gpu") == "select" and jax_backend.branch_mode("cuda") == "select"
    assert jax_backend.branch_mode("cpu") == "cond" and jax_backend.branch_mode("tpu") == "cond"
    assert jax_backend.branch_mode() == ("select" if jax.default_backend() in ("gpu", "cuda", "rocm") else "cond")
    monkeypatch.delenv(jax_backend.BRANCHES_VARIABLE)
    assert jax_backend.branch_mode("gpu") == "cond"  # unset: today's lax.cond everywhere
    monkeypatch.setenv(jax_backend.BRANCHES_VARIABLE, "")
    assert jax_backend.branch_setting() == "cond"
