"""``polyak.optax.sgd`` in the libraries that take an optax transformation, against polyak's own step.

The reference is always ``jax.jit(polyak.SGD(...).stateless_apply)`` on the same data; the face
returns ``new - old`` as updates, and ``old + (new - old)`` rounds, so weights agree to float32
rounding (a few ulps), and the state entries exactly.
"""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import polyak  # noqa: E402
from polyak.optax import SGDState, ema_params, sgd  # noqa: E402

ROOT = pathlib.Path(__file__).parent.parent
SUFFIXES = {"averages": "_average", "accumulators": "_gradient_accumulator", "momentums": "_momentum",
            "masters": "_master"}


def make_params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), dtype), "bias": jnp.asarray(rng.normal(size=4),
                                                                                                   dtype)},
            "out": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), dtype)}}


def gradient_sequence(params, steps, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), params)
            for _ in range(steps)]


def polyak_run(params, grads, exclude=(), **config):
    """Weights and ``{variable name: value}`` after ``jax.jit(polyak.SGD(**config).stateless_apply)``."""
    opt = polyak.SGD(**config)
    opt.exclude_from_weight_decay(var_names=list(exclude))
    opt.build(params)
    values = [v.value for v in opt.variables]
    step = jax.jit(opt.stateless_apply)
    for g in grads:
        params, values = step(values, g, params)
    return params, {v.name: value for v, value in zip(opt.variables, values)}


def face_run(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def state_by_name(state):
    """The face's state keyed as polyak names its variables (``{path}_{role}``), independently of the face."""
    out = {"iteration": state.iteration}
    if state.skipped is not None:
        out["skipped_steps"] = state.skipped
    for field, suffix in SUFFIXES.items():
        tree = getattr(state, field)
        if tree is not None:
            for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
                out[jax.tree_util.keystr(path, simple=True, separator="/").replace("/", "_") + suffix] = value
    return out


def assert_weights_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.dtype == e.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), rtol=2e-6, atol=2e-6)


def assert_state_equal(state, variables, rtol=0.0):
    """Every state entry equals polyak's variable of the same name (within ``rtol``)."""
    named = state_by_name(state)
    assert set(named) == set(variables) - {"learning_rate"}
    for name, value in named.items():
        np.testing.assert_allclose(np.asarray(value, np.float64), np.asarray(variables[name], np.float64),
                                   rtol=rtol, atol=rtol, err_msg=name)


CONFIGS = {
    "plain": dict(learning_rate=0.1),
    "nesterov-decay-clip-ema": dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.1,
                                    global_clipnorm=1.0, use_ema=True, ema_momentum=0.5,
                                    ema_overwrite_frequency=3),
    "accumulation-clipvalue-scale": dict(learning_rate=0.1, momentum=0.5, gradient_accumulation_steps=2,
                                         clipvalue=0.3, loss_scale_factor=4.0),
    "schedule-clipnorm-skip": dict(learning_rate=polyak.schedules.CosineDecay(0.1, 5, warmup_target=0.2,
                                                                              warmup_steps=2),
                                   momentum=0.9, clipnorm=0.5, skip_nonfinite=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_update_equals_polyaks_jitted_stateless_apply(name):
    params = make_params()
    grads = gradient_sequence(params, 6)
    if CONFIGS[name].get("skip_nonfinite"):
        grads[2]["out"]["kernel"] = grads[2]["out"]["kernel"].at[0, 0].set(jnp.nan)
    exclude = ["bias"] if CONFIGS[name].get("weight_decay") else []
    expected, variables = polyak_run(params, grads, exclude, **CONFIGS[name])
    actual, state = face_run(sgd(**CONFIGS[name], exclude_from_weight_decay=exclude), params, grads)
    assert_weights_close(actual, expected)
    assert_state_equal(state, variables)
    if CONFIGS[name].get("skip_nonfinite"):
        assert int(state.skipped) == 1 and int(state.iteration) == 5


def test_master_weights_on_bfloat16_leaves():
    params = make_params()
    params["dense"]["bias"] = params["dense"]["bias"].astype(jnp.bfloat16)
    grads = gradient_sequence(params, 3, scale=1e-3)
    config = dict(learning_rate=0.01, momentum=0.9, master_weights=True)
    expected, variables = polyak_run(params, grads, **config)
    actual, state = face_run(sgd(**config), params, grads)
    assert state.masters["dense"]["bias"].dtype == jnp.float32 and state.masters["out"]["kernel"] is None
    assert_weights_close(actual, expected)
    assert_state_equal(state, variables)


def test_optax_schedule_is_a_function_of_the_raw_step_count():
    params = make_params()
    grads = gradient_sequence(params, 5)
    expected, variables = polyak_run(params, grads, learning_rate=polyak.schedules.ExponentialDecay(0.1, 2, 0.5),
                                     momentum=0.9)
    actual, state = face_run(sgd(optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5), momentum=0.9),
                             params, grads)
    assert_weights_close(actual, expected)
    assert_state_equal(state, variables)
    constant, _ = face_run(sgd(0.1, momentum=0.9), params, grads)
    assert not np.allclose(constant["out"]["kernel"], actual["out"]["kernel"])


def test_init_is_pure_and_takes_any_number_of_trees():
    tx = sgd(0.1, momentum=0.9, use_ema=True)
    first, second = make_params(), {"w": jnp.ones(5), "nested": [jnp.zeros((2, 2))]}
    state_first = tx.init(first)
    state_second = tx.init(second)
    assert jax.tree.structure(state_second.momentums) == jax.tree.structure(second)
    assert jax.tree.structure(tx.init(first)) == jax.tree.structure(state_first)
    traced = jax.jit(tx.init)(first)  # no tracer is kept: later eager calls work
    for state, params in ((state_first, first), (state_second, second), (traced, first)):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = tx.update(grads, state, params)
        assert_weights_close(optax.apply_updates(params, updates), jax.tree.map(lambda p: p - 0.1, params))
        assert int(state.iteration) == 1


def test_flax_train_state():
    train_state = pytest.importorskip("flax.training.train_state")
    params = make_params()
    grads = gradient_sequence(params, 4)
    config = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.05, use_ema=True)
    expected, variables = polyak_run(params, grads, ["bias"], **config)
    tx = sgd(**config, exclude_from_weight_decay=["bias"])
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    apply = jax.jit(lambda s, g: s.apply_gradients(grads=g))
    for g in grads:
        state = apply(state, g)
    assert_weights_close(state.params, expected)
    assert_state_equal(state.opt_state, variables)
    averages = {k: v for k, v in variables.items() if k.endswith("_average")}
    np.testing.assert_array_equal(ema_params(state.opt_state)["dense"]["bias"], averages["dense_bias_average"])


def test_flax_nnx_optimizer_unwraps_variables():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)), jnp.float32)
    config = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.1, use_ema=True)
    optimizer = nnx.Optimizer(model, sgd(**config, exclude_from_weight_decay=["bias"]), wrt=nnx.Param)
    grads = []

    @nnx.jit
    def train_step(model, optimizer):
        g = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, g)
        return nnx.as_pure(nnx.state(g, nnx.Param))

    for _ in range(3):
        grads.append(train_step(model, optimizer))
    expected, variables = polyak_run(params, grads, ["bias"], **config)
    assert_weights_close(nnx.as_pure(nnx.state(model, nnx.Param)), expected)
    assert_state_equal(nnx.as_pure(optimizer.opt_state), variables)
    np.testing.assert_array_equal(ema_params(optimizer.opt_state)["kernel"], variables["kernel_average"])


def test_equinox_filtered_tree_with_none_leaves():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 3)), jnp.float32)
    config = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.1)
    tx = sgd(**config, exclude_from_weight_decay=["bias"])
    params = eqx.filter(model, eqx.is_inexact_array)
    state = tx.init(params)

    @eqx.filter_jit
    def train_step(model, state):
        g = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(model)
        updates, state = tx.update(g, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, g

    grads = []
    for _ in range(3):
        model, state, g = train_step(model, state)
        grads.append(g)
    expected, variables = polyak_run(params, grads, ["bias"], **config)
    assert_weights_close(eqx.filter(model, eqx.is_inexact_array), expected)
    assert_state_equal(state, variables)
    assert "layers_0_bias_momentum" in variables


def test_optax_chain_with_clipping():
    params = make_params()
    grads = gradient_sequence(params, 4, scale=3.0)
    clip = optax.clip_by_global_norm(1.0)
    clipped = [jax.jit(clip.update)(g, clip.init(params))[0] for g in grads]
    assert optax.tree.norm(grads[0]) > 1.5 and np.isclose(optax.tree.norm(clipped[0]), 1.0)
    expected, variables = polyak_run(params, clipped, learning_rate=0.1, momentum=0.9, use_ema=True)
    tx = optax.chain(optax.clip_by_global_norm(1.0), sgd(0.1, momentum=0.9, use_ema=True))
    actual, state = face_run(tx, params, grads)
    assert_weights_close(actual, expected)
    assert_state_equal(state[1], variables)
    np.testing.assert_allclose(ema_params(state)["out"]["kernel"], variables["out_kernel_average"], rtol=1e-6)


def test_optax_multisteps_is_keras_gradient_accumulation():
    params = make_params()
    grads = gradient_sequence(params, 6)
    expected, _ = polyak_run(params, grads, learning_rate=0.1, momentum=0.9, gradient_accumulation_steps=3)
    actual, state = face_run(optax.MultiSteps(sgd(0.1, momentum=0.9), every_k_schedule=3), params, grads)
    assert_weights_close(actual, expected)
    assert int(state.inner_opt_state.iteration) == 2


def test_jit_with_donated_buffers():
    params = make_params()
    grads = gradient_sequence(params, 3)
    config = dict(learning_rate=0.1, momentum=0.9, use_ema=True)
    expected, variables = polyak_run(params, grads, **config)
    tx = sgd(**config)

    def train_step(params, state, g):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(train_step, donate_argnums=(0, 1))
    current, state = jax.tree.map(jnp.copy, params), tx.init(params)
    for g in grads:
        donated = (current["out"]["kernel"], state.momentums["out"]["kernel"])
        current, state = step(current, state, g)
        assert all(x.is_deleted() for x in donated)
    assert_weights_close(current, expected)
    assert_state_equal(state, variables)


SHARDED = """
import jax, jax.numpy as jnp, numpy as np, optax, polyak
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from polyak.optax import sgd
mesh = Mesh(np.array(jax.devices()), ("x",))
rng = np.random.default_rng(0)
shard = {"w": NamedSharding(mesh, P("x", None)), "b": NamedSharding(mesh, P())}
params = {k: jax.device_put(jnp.asarray(rng.normal(size=s), jnp.float32), shard[k])
          for k, s in (("w", (4, 3)), ("b", (3,)))}
grads = [{k: jax.device_put(jnp.asarray(rng.normal(size=v.shape), jnp.float32), shard[k])
          for k, v in params.items()} for _ in range(3)]
config = dict(learning_rate=0.1, momentum=0.9, use_ema=True, weight_decay=0.1)
tx = sgd(**config)
state = tx.init(params)
@jax.jit
def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
opt = polyak.SGD(**config); opt.build(params)
values, ref = [v.value for v in opt.variables], params
p = params
for g in grads:
    p, state = step(p, state, g)
    ref, values = jax.jit(opt.stateless_apply)(values, g, ref)
for k in params:
    np.testing.assert_allclose(p[k], ref[k], rtol=2e-6, atol=2e-6)
    for tree in (state.momentums, state.averages):
        assert tree[k].sharding.is_equivalent_to(params[k].sharding, params[k].ndim), (k, tree[k].sharding)
print(len(jax.devices()), "devices: state sharded like the params")
"""


def test_sharded_params_give_state_sharded_like_them():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PATH": "/usr/bin:/bin",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 devices: state sharded like the params" in result.stdout


def test_weight_decay_mask_tree_and_function():
    params = make_params()
    grads = gradient_sequence(params, 3)
    config = dict(learning_rate=0.1, momentum=0.9, weight_decay=0.2)
    expected, variables = polyak_run(params, grads, ["bias"], **config)
    mask_tree = {"dense": {"kernel": True, "bias": False}, "out": {"kernel": True}}
    for mask in (mask_tree, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)):
        actual, state = face_run(sgd(**config, weight_decay_mask=mask), params, grads)
        assert_weights_close(actual, expected)
        assert_state_equal(state, variables)
    # The mask and the names exclude together.
    spared, _ = face_run(sgd(**config, weight_decay_mask={"dense": {"kernel": False, "bias": True},
                                                         "out": {"kernel": True}},
                             exclude_from_weight_decay=["bias"]), params, grads)
    dense_spared, _ = polyak_run(params, grads, ["dense"], **config)
    assert_weights_close(spared, dense_spared)


# --- random configurations -------------------------------------------------------------------------
configs = st.fixed_dictionaries({
    "learning_rate": st.sampled_from([0.01, 0.1]),
    "momentum": st.sampled_from([0.0, 0.5, 0.9]),
    "nesterov": st.booleans(),
    "weight_decay": st.sampled_from([None, 0.1]),
    "clip": st.sampled_from([{}, {"clipnorm": 0.5}, {"clipvalue": 0.2}, {"global_clipnorm": 1.0}]),
    "use_ema": st.booleans(),
    "ema_overwrite_frequency": st.sampled_from([None, 2]),
    "gradient_accumulation_steps": st.sampled_from([None, 2]),
    "skip_nonfinite": st.booleans(),
})


@settings(max_examples=6, deadline=None)
@given(config=configs, seed=st.integers(0, 100))
def test_random_configurations_match_polyak(config, seed):
    config = dict(config)
    config.update(config.pop("clip"))
    params = make_params(seed)
    grads = gradient_sequence(params, 4, seed=seed + 1)
    expected, variables = polyak_run(params, grads, ["bias"], **config)
    actual, state = face_run(sgd(**config, exclude_from_weight_decay=["bias"]), params, grads)
    assert_weights_close(actual, expected)
    # the face's weights are ``w + (w_new - w)``, an ulp off ``w_new`` after an EMA overwrite, and the
    # state computed from them afterwards inherits that: equal to float32 rounding
    assert_state_equal(state, variables, rtol=2e-6)


# --- bad input -------------------------------------------------------------------------------------
def test_missing_params_is_a_clear_error():
    tx = sgd(0.1)
    params = make_params()
    with pytest.raises(ValueError, match=r"`params` is required.*Received: params=None"):
        tx.update(params, tx.init(params))


def test_gradients_of_another_tree_name_the_paths():
    tx = sgd(0.1, momentum=0.9)
    params = make_params()
    grads = {"dense": {"kernel": params["dense"]["kernel"]}, "out": {"kernel": params["out"]["kernel"],
                                                                    "extra": jnp.ones(2)}}
    with pytest.raises(ValueError, match=r"`grads`.*missing \['dense/bias'\], unexpected \['out/extra'\]"):
        tx.update(grads, tx.init(params), params)


def test_state_of_another_tree_or_configuration_is_refused():
    tx = sgd(0.1, momentum=0.9)
    params = make_params()
    other = {"w": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"`state.momentums` must have the structure of `params`.*"
                                         r"missing \['dense/bias', 'dense/kernel', 'out/kernel'\], unexpected \['w'\]"):
        tx.update(params, tx.init(other), params)
    with pytest.raises(ValueError, match=r"`state.averages` must be an array"):
        sgd(0.1, momentum=0.9, use_ema=True).update(params, tx.init(params), params)
    with pytest.raises(TypeError, match=r"`state` must be the SGDState.*Received: state of type tuple"):
        tx.update(params, (), params)


def test_mask_of_another_tree_names_the_paths():
    params = make_params()
    tx = sgd(0.1, weight_decay=0.1, weight_decay_mask={"dense": {"kernel": True}, "out": {"kernel": True}})
    with pytest.raises(ValueError, match=r"`weight_decay_mask` must have the structure of `params`.*"
                                         r"missing \['dense/bias'\]"):
        tx.init(params)
    traced = sgd(0.1, weight_decay=0.1, weight_decay_mask=lambda p: jax.tree.map(lambda x: x.sum() > 0, p))
    with pytest.raises(TypeError, match=r"a Python bool for each weight.*for 'dense/bias'"):
        traced.update(params, SGDState(iteration=jnp.zeros((), jnp.int32)), params)


def test_non_float_leaf_is_named_at_init_and_at_trace_time():
    tx = sgd(0.1)
    params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(TypeError, match=r"'step' must have a floating dtype. Received: dtype=int32"):
        tx.init(params)
    floats = {"w": jnp.ones(3), "step": jnp.zeros(())}
    with pytest.raises(TypeError, match=r"'step' must have a floating dtype"):
        jax.jit(tx.update)(floats, tx.init(floats), params)


def test_bad_hyperparameters_fail_at_construction_with_keras_messages():
    with pytest.raises(ValueError, match=r"`momentum` must be .*Received: momentum=1.5"):
        sgd(0.1, momentum=1.5)
    with pytest.raises(ValueError, match=r"Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
        sgd(0.1, clipnorm=1.0, clipvalue=1.0)


def test_learning_rate_and_exclusions_of_the_wrong_kind_are_refused():
    with pytest.raises(TypeError, match=r"function of the step count.*Received: learning_rate=<function"):
        sgd(lambda: 0.1)
    with pytest.raises(TypeError, match=r"a list of strings. Received: exclude_from_weight_decay='bias'"):
        sgd(0.1, exclude_from_weight_decay="bias")


def test_ema_params_needs_one_sgd_state_with_averages():
    params = make_params()
    with pytest.raises(ValueError, match=r"use_ema=True"):
        ema_params(sgd(0.1).init(params))
    state = sgd(0.1, use_ema=True).init(params)
    with pytest.raises(ValueError, match=r"exactly one SGDState. Received: a state holding 2"):
        ema_params((state, state))


def test_weights_within_a_factor_two_come_out_bit_for_bit():
    params = {"w": jnp.asarray(np.random.default_rng(4).uniform(1, 2, size=50), jnp.float32)}
    grads = gradient_sequence(params, 3)
    expected, _ = polyak_run(params, grads, learning_rate=0.01, momentum=0.9)
    actual, _ = face_run(sgd(0.01, momentum=0.9), params, grads)
    np.testing.assert_array_equal(actual["w"], expected["w"])


def test_readme_jax_section_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## JAX (optax, Flax, Equinox)"):]
    section = section[:section.index("\n## ", 1)]
    namespace = {}
    exec("\n".join(re.findall(r"```python\n(.*?)```", section, re.S)), namespace)
    assert int(namespace["state"].step) == 10 and int(namespace["optimizer"].step[...]) == 1
    assert jax.tree.structure(namespace["eval_params"]) == jax.tree.structure(namespace["params"])
