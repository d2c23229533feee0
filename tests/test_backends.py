"""PyTorch and JAX: the backend follows the arrays, and the numbers follow NumPy's.

Keras-side agreement is in ``test_conformance``; here are the framework
contracts: in-place torch updates outside autograd, state on the weight's
device and dtype, JAX purity under ``jax.jit`` (one trace, donation, pytrees,
``lax.cond``), the counter, portable state and the errors for bad input.
"""

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimizer_db as db
import polyak
from polyak import schedules

SHAPES = [(4, 3), (3,), (2, 2)]
#: Every feature at once, under a warmup cosine schedule (``optimizer_db``).
ALL_FEATURES = db.config("features:all")


def _problem(seed=0, steps=50):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(steps)]
    return weights, grads


def _numpy_run(weights, grads, opt=None):
    weights = [w.copy() for w in weights]
    opt = opt or ALL_FEATURES.optimizer()
    for g in grads:
        opt.apply(g, weights)
    return weights, opt


def _torch_run(weights, grads, opt=None):
    params = [torch.nn.Parameter(torch.tensor(w)) for w in weights]
    opt = opt or ALL_FEATURES.optimizer()
    for g in grads:
        opt.apply([torch.from_numpy(x) for x in g], params)
    return [p.detach().numpy() for p in params], opt


def _jax_run(weights, grads, opt=None):
    params = {f"w{i}": jnp.asarray(w) for i, w in enumerate(weights)}
    if opt is None:
        opt = ALL_FEATURES.optimizer()
        opt.build(params)
    step = jax.jit(opt.stateless_apply)
    values = [v.value for v in opt.variables]
    for g in grads:
        params, values = step(values, {f"w{i}": jnp.asarray(x) for i, x in enumerate(g)}, params)
    for variable, value in zip(opt.variables, values):
        variable.assign(value)
    return [np.asarray(params[f"w{i}"]) for i in range(len(weights))], opt


RUNS = {"numpy": _numpy_run, "torch": _torch_run, "jax": _jax_run}


# --- the backend follows the arrays, and nothing is imported before ------------------------------
def _python(code, env=None):
    """What ``code`` prints, run by a fresh interpreter (a fresh set of imports)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout


def test_importing_polyak_imports_neither_torch_nor_jax():
    code = (
        "import sys, numpy as np, polyak\n"
        "w = np.zeros(3, np.float32)\n"
        "polyak.SGD(momentum=0.9).apply([np.ones(3, np.float32)], [w])\n"
        "assert w[0] != 0\n"
        "print(sorted(m for m in ('torch', 'jax', 'array_api_compat') if m in sys.modules))\n"
    )
    assert _python(code).strip() == "[]"


def test_polyak_works_with_neither_framework_installed():
    code = (
        "import sys\n"
        "for name in ('torch', 'jax', 'jaxlib', 'array_api_compat'):\n"
        "    sys.modules[name] = None  # makes `import name` fail, as when not installed\n"
        "import numpy as np, polyak\n"
        "w = np.zeros(2)\n"
        "polyak.SGD(learning_rate=polyak.schedules.ExponentialDecay(0.1, 2, 0.5)).apply([np.ones(2)], [w])\n"
        "print(np.allclose(w, -0.1, rtol=1e-7))\n"
    )
    assert _python(code).strip() == "True"


@pytest.mark.parametrize("make,name", [
    (lambda: np.zeros(3, np.float32), "numpy"),
    (lambda: torch.zeros(3), "torch"),
    (lambda: torch.nn.Parameter(torch.zeros(3)), "torch"),
    (lambda: polyak.Variable(torch.zeros(3)), "torch"),
    (lambda: jnp.zeros(3), "jax"),
    (lambda: polyak.Variable(jnp.zeros(3)), "jax"),
])
def test_backend_is_chosen_from_the_arrays_at_build(make, name):
    opt = polyak.SGD(momentum=0.9, use_ema=True)
    opt.build([make()])
    assert opt._backend.name == name
    assert all(opt._backend.owns(v.value) for v in opt.variables)
    assert [v.dtype for v in opt.variables] == [
        "int64" if name != "jax" or jax.config.jax_enable_x64 else "int32", "float32", "float32", "float32"
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_torch_state_takes_the_weights_dtype(dtype):
    p = torch.nn.Parameter(torch.ones(3, dtype=dtype))
    opt = polyak.SGD(learning_rate=0.5, momentum=0.5, use_ema=True)
    opt.apply([torch.ones(3, dtype=dtype)], [p])
    assert [v.value.dtype for v in opt.variables[2:]] == [dtype, dtype]
    assert opt.variables[1].value.dtype == torch.float32
    np.testing.assert_allclose(p.detach().float().numpy(), 0.5)


# --- PyTorch ------------------------------------------------------------------------------------
def test_torch_model_parameters_are_updated_in_place_outside_autograd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    storages = [p.data_ptr() for p in model.parameters()]
    opt = polyak.SGD(learning_rate=0.1, momentum=0.9, use_ema=True)
    losses = []
    for _ in range(20):
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.apply([p.grad for p in model.parameters()], list(model.parameters()))
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    for p, ptr in zip(model.parameters(), storages):
        assert p.data_ptr() == ptr and p.is_leaf and p.requires_grad and p.grad_fn is None
    assert all(not v.value.requires_grad for v in opt.variables)


def test_torch_apply_equals_numpy_apply():
    weights, grads = _problem(steps=10)
    expected, _ = _numpy_run(weights, grads)
    got, opt = _torch_run(weights, grads)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    assert all(isinstance(v.value, torch.Tensor) for v in opt.variables)


def test_torch_parameters_without_grad_follow_the_none_rule():
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    model(torch.randn(5, 3)).sum().backward()
    bias = model.bias.detach().clone()
    opt = polyak.SGD(learning_rate=0.1)
    with pytest.warns(UserWarning, match="variable_1"):
        opt.apply([p.grad for p in model.parameters()], list(model.parameters()))
    assert torch.equal(model.bias, bias)


def test_apply_gradients_takes_pairs_of_tensors():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = polyak.SGD(learning_rate=1.0)
    it = opt.apply_gradients(zip([torch.ones(2)], [p]))
    assert int(it.numpy()) == 1 and p.tolist() == [-1.0, -1.0]


@pytest.mark.parametrize("grad", [np.ones(3, np.float32), jnp.ones(3), [1.0, 1.0, 1.0]],
                         ids=["numpy", "jax", "list"])
def test_torch_weights_take_cpu_gradients_of_another_kind(grad):
    p = torch.nn.Parameter(torch.zeros(3))
    polyak.SGD(learning_rate=1.0).apply([grad], [p])
    assert p.tolist() == [-1.0, -1.0, -1.0]


@pytest.mark.parametrize("grad", [torch.ones(3), jnp.ones(3)], ids=["torch", "jax"])
def test_numpy_weights_take_cpu_gradients_of_another_kind(grad):
    w = np.zeros(3, np.float32)
    polyak.SGD(learning_rate=1.0).apply([grad], [w])
    assert w.tolist() == [-1.0, -1.0, -1.0]


def test_torch_stateless_apply_is_pure():
    weights, grads = _problem(steps=4)
    opt = polyak.SGD(learning_rate=0.1, momentum=0.9)
    params = [torch.tensor(w) for w in weights]
    opt.build(params)
    values = [v.value.clone() for v in opt.variables]
    frozen = [t.clone() for t in params + values]
    new_params, new_values = opt.stateless_apply(values, [torch.from_numpy(g) for g in grads[0]], params)
    for before, after in zip(frozen, params + values):
        assert torch.equal(before, after)
    assert not torch.equal(new_params[0], params[0]) and int(new_values[0]) == 1


# --- JAX ------------------------------------------------------------------------------------------
def test_jax_jit_equals_numpy_apply_on_a_pytree():
    weights, grads = _problem(steps=10)
    expected, _ = _numpy_run(weights, grads)
    got, _ = _jax_run(weights, grads)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_stateless_apply_is_traced_once_for_a_run_with_a_schedule():
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    opt = ALL_FEATURES.optimizer()
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.build(params)
    traces = []

    def step(optimizer_values, grads, params):
        traces.append(1)
        return opt.stateless_apply(optimizer_values, grads, params)

    jitted = jax.jit(step, donate_argnums=(0, 2))
    values = [v.value for v in opt.variables]
    rates = []
    for _ in range(20):
        grads = jax.tree_util.tree_map(lambda x: x + 0.5, params)
        params, values = jitted(values, grads, params)
        rates.append(float(opt._learning_rate(values[0])))
    assert len(traces) == 1
    assert int(values[0]) == 20 and len(set(rates)) > 10
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        {"dense": {"kernel": 0, "bias": 0}})


def test_accumulation_and_ema_overwrite_are_lax_conds_in_the_trace():
    opt = polyak.SGD(momentum=0.9, use_ema=True, ema_overwrite_frequency=2, gradient_accumulation_steps=3)
    w = polyak.Variable(jnp.ones(2), name="w")
    w.overwrite_with_gradient = False
    opt.build([w])
    jaxpr = jax.make_jaxpr(opt.stateless_apply)([v.value for v in opt.variables], [jnp.ones(2)], [w.value])
    assert str(jaxpr).count("cond[") >= 2


def test_jax_variables_are_trained_by_apply_with_rebinding():
    weights, grads = _problem(steps=10)
    expected, _ = _numpy_run(weights, grads)
    variables = [polyak.Variable(jnp.asarray(w)) for w in weights]
    opt = ALL_FEATURES.optimizer()
    for g in grads:
        opt.apply([jnp.asarray(x) for x in g], variables)
    for a, v in zip(expected, variables):
        assert isinstance(v.value, jax.Array)
        np.testing.assert_allclose(v.numpy(), a, rtol=1e-6, atol=1e-7)


def test_a_dict_of_jax_variables_is_trained_by_apply():
    params = {"kernel": polyak.Variable(jnp.ones((2, 2)), name="kernel"), "bias": polyak.Variable(jnp.ones(2), name="bias")}
    opt = polyak.SGD(learning_rate=0.5, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_names=["bias"])
    opt.apply({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, params)
    np.testing.assert_allclose(params["kernel"].numpy(), 0.25)  # 1 - 1*0.5*0.5 - 0.5
    np.testing.assert_allclose(params["bias"].numpy(), 0.5)
    with pytest.raises(ValueError, match="`grads` must have the structure"):
        opt.apply({"kernel": jnp.ones((2, 2))})


def test_jax_arrays_on_different_devices_are_refused():
    code = (
        "import jax, jax.numpy as jnp, polyak\n"
        "cpus = jax.devices('cpu')\n"
        "a, b = jax.device_put(jnp.zeros(2), cpus[0]), jax.device_put(jnp.zeros(2), cpus[1])\n"
        "opt = polyak.SGD()\n"
        "try:\n"
        "    opt.build([a, b])\n"
        "except ValueError as error:\n"
        "    print(error, opt.built)\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = _python(code, env=env)
    assert "must be on the same devices" in out and "'variable_1' is on ['cpu:1']" in out
    assert out.strip().endswith("False")


def test_a_plain_jax_array_in_apply_points_to_stateless_apply_or_variable():
    w = jnp.zeros(2)
    opt = polyak.SGD()
    with pytest.raises(TypeError, match="stateless_apply.*polyak.Variable") as info:
        opt.apply([jnp.ones(2)], [w])
    assert "'variable_0'" in str(info.value)
    assert not opt.built and float(w.sum()) == 0


def test_pytree_structure_mismatch_names_the_variables():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}
    opt = polyak.SGD()
    opt.build(params)
    values = [v.value for v in opt.variables]
    with pytest.raises(ValueError, match=r"`trainable_variables` must have the structure.*missing \['bias'\]"):
        opt.stateless_apply(values, params, {"kernel": params["kernel"], "b": params["bias"]})
    with pytest.raises(ValueError, match="`grads` must have the structure"):
        opt.stateless_apply(values, [params["bias"], params["kernel"]], params)
    with pytest.warns(UserWarning, match=r"\['bias'\]"):
        new, _ = opt.stateless_apply(values, {"kernel": jnp.ones((2, 2)), "bias": None}, params)
    assert float(new["bias"].sum()) == 0 and float(new["kernel"][0, 0]) == pytest.approx(0.99)


def test_a_dict_for_an_optimizer_built_on_a_list_is_refused():
    opt = polyak.SGD()
    opt.build([jnp.zeros(2)])
    with pytest.raises(ValueError, match=r"`grads` must be a list.*Received: a dict with keys \['w'\]"):
        opt.stateless_apply([v.value for v in opt.variables], {"w": jnp.ones(2)}, [jnp.zeros(2)])


def test_pytrees_need_jax_arrays():
    with pytest.raises(TypeError, match="pytrees.*JAX arrays only. Received: trainable_variables of type dict"):
        polyak.SGD().build({"w": np.zeros(2)})


def test_int32_counter_saturates_instead_of_wrapping():
    if jax.config.jax_enable_x64:
        pytest.skip("with jax_enable_x64 the counter is int64")
    opt = polyak.SGD(learning_rate=schedules.ExponentialDecay(0.1, 1000, 0.5))
    opt.build([jnp.zeros(2)])
    top = np.iinfo(np.int32).max
    values = [jnp.asarray(top - 1, jnp.int32)]
    step = jax.jit(opt.stateless_apply)
    for _ in range(3):
        _, values = step(values, [jnp.ones(2)], [jnp.zeros(2)])
    assert values[0].dtype == jnp.int32 and int(values[0]) == top


def test_int64_counter_with_jax_enable_x64():
    code = (
        "import jax, jax.numpy as jnp, polyak\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "opt = polyak.SGD(momentum=0.9)\n"
        "opt.build([jnp.zeros(2, jnp.float64)])\n"
        "values = [jnp.asarray(2**40, jnp.int64), opt.variables[1].value, opt.variables[2].value]\n"
        "_, values = jax.jit(opt.stateless_apply)(values, [jnp.ones(2, jnp.float64)], [jnp.zeros(2, jnp.float64)])\n"
        "print(values[0].dtype, int(values[0]) - 2**40, values[2].dtype)\n"
    )
    assert _python(code).split() == ["int64", "1", "float64"]


# --- the same run everywhere; state moves between backends ------------------------------------------
def test_the_same_50_step_run_agrees_on_numpy_torch_and_jax():
    weights, grads = _problem(steps=50)
    results = {name: run(weights, grads)[0] for name, run in RUNS.items()}
    for name in ("torch", "jax"):
        for a, b in zip(results["numpy"], results[name]):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("source", list(RUNS))
@pytest.mark.parametrize("target", list(RUNS))
def test_state_saved_on_one_backend_continues_on_another(source, target):
    weights, grads = _problem(steps=30)
    reference, _ = _numpy_run(weights, grads)
    halfway, opt = RUNS[source](weights, grads[:15])
    store = {}
    opt.save_own_variables(store)
    assert all(isinstance(v, np.ndarray) for v in store.values())
    config = json.loads(json.dumps(polyak.optimizers.serialize(opt)))
    resumed = polyak.optimizers.deserialize(config)
    if target == "jax":
        resumed.build({f"w{i}": jnp.asarray(w) for i, w in enumerate(halfway)})
    elif target == "torch":
        resumed.build([torch.nn.Parameter(torch.tensor(w)) for w in halfway])
    else:
        resumed.build([w.copy() for w in halfway])
    resumed.load_own_variables(store)
    assert int(resumed._iterations.numpy()) == 15
    if target == "torch":
        params = resumed._trainable_variables
        for g in grads[15:]:
            resumed.apply([torch.from_numpy(x) for x in g], params)
        final = [p.detach().numpy() for p in params]
    elif target == "jax":
        final, _ = _jax_run(halfway, grads[15:], resumed)
    else:
        final = resumed._trainable_variables
        for g in grads[15:]:
            resumed.apply(g, final)
    for a, b in zip(reference, final):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_get_config_is_backend_free():
    configs = [RUNS[name](*_problem(steps=2))[1].get_config() for name in RUNS]
    assert configs[0] | {"name": None} == configs[1] | {"name": None} == configs[2] | {"name": None}
    json.dumps(configs)


# --- bad input: a clear error naming the variable, and nothing changed ----------------------------------
# (torch's bad input is in ``optimizer_db.BAD_APPLY_INPUTS``, run by ``test_errors`` on every tier)
def test_jax_bad_input_is_refused():
    opt = polyak.SGD()
    with pytest.raises(TypeError, match="'variable_0' is a jax.Array and 'variable_1' is a torch.Tensor"):
        opt.build([jnp.zeros(2), torch.zeros(2)])
    with pytest.raises(TypeError, match="'variable_0' must have a floating dtype"):
        opt.build([jnp.zeros(2, jnp.int32)])
    assert not opt.built
    opt.build([jnp.zeros(2)])
    values = [v.value for v in opt.variables]
    with pytest.raises(ValueError, match="Argument `trainable_variables` must be a list"):
        opt.stateless_apply(values, [jnp.ones(2)], [jnp.zeros(2), jnp.zeros(2)])
    with pytest.raises(ValueError, match=r"'variable_0' must have the shape \(2,\)"):
        opt.stateless_apply(values, [jnp.ones(2)], [jnp.zeros(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.stateless_apply(values, [np.ones(2, np.float32)], [jnp.zeros(2)])  # a NumPy gradient converts
    assert int(opt.iterations.numpy()) == 0


@pytest.mark.parametrize("target", ["torch", "jax"])
def test_checkpoint_file_saved_on_numpy_loads_on_torch_and_jax_and_back(tmp_path, target):
    make = {"numpy": lambda n: np.zeros(n, np.float32), "torch": torch.zeros, "jax": jnp.zeros}

    def weights(kind):
        return [polyak.Variable(make[kind](3), name="kernel"), polyak.Variable(make[kind](2), name="bias")]

    source = weights("numpy")
    opt = polyak.SGD(momentum=0.9, use_ema=True, gradient_accumulation_steps=2)
    for _ in range(3):
        opt.apply([np.ones(3, np.float32), np.ones(2, np.float32)], source)
    polyak.save(tmp_path / "a.ckpt", opt, source)
    moved = weights(target)
    loaded = polyak.load(tmp_path / "a.ckpt", variables=moved)
    assert loaded._backend.name == target and int(loaded._iterations.numpy()) == 3
    polyak.save(tmp_path / "b.ckpt", loaded, moved)
    back = weights("numpy")
    again = polyak.load(tmp_path / "b.ckpt", variables=back)
    for a, b in zip(source + opt.variables, back + again.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
