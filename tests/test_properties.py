"""Invariants on random shapes, dtypes and configs (hypothesis)."""

import json
import os
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optimizer_db as db
import polyak
from polyak import optimizers, schedules

settings.register_profile("polyak", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("polyak")

FLOATS = [np.float16, np.float32, np.float64]
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


def arrays(dtype, shape, bound=100.0):
    width = 8 * np.dtype(dtype).itemsize
    return hnp.arrays(dtype, shape, elements=st.floats(-bound, bound, width=width))


rates = st.floats(0, 10, allow_nan=False)
unit = st.floats(0, 1)


@st.composite
def schedule(draw):
    """A valid schedule of any built-in kind."""
    steps = draw(st.integers(1, 10**6))
    lr = draw(st.floats(0, 1))
    kind = draw(st.sampled_from(["exp", "piecewise", "poly", "inverse", "cosine", "restarts"]))
    if kind == "exp":
        return schedules.ExponentialDecay(lr, steps, draw(unit), staircase=draw(st.booleans()))
    if kind == "piecewise":
        bounds = sorted(draw(st.sets(st.integers(0, 10**9), min_size=1, max_size=3)))
        return schedules.PiecewiseConstantDecay(bounds, draw(st.lists(unit, min_size=len(bounds) + 1,
                                                                      max_size=len(bounds) + 1)))
    if kind == "poly":
        return schedules.PolynomialDecay(lr, steps, draw(unit), draw(st.floats(0.5, 3)), draw(st.booleans()))
    if kind == "inverse":
        return schedules.InverseTimeDecay(lr, steps, draw(unit), draw(st.booleans()))
    if kind == "cosine":
        warmup = draw(st.none() | st.floats(0, 1))
        return schedules.CosineDecay(lr, steps, draw(unit), warmup_target=warmup,
                                     warmup_steps=draw(st.integers(0, 100)) if warmup is not None else 0)
    return schedules.CosineDecayRestarts(lr, steps, draw(st.floats(1, 3)), draw(unit), draw(unit))


@st.composite
def configs(draw, schedules_too=True, accumulation=True, ema=True):
    """Valid SGD keywords covering every option."""
    config = {"learning_rate": draw(schedule() if schedules_too and draw(st.booleans()) else st.floats(0, 1)),
              "momentum": draw(st.sampled_from([0.0, 0.5, 0.9]) | unit),
              "nesterov": draw(st.booleans())}
    clip = draw(st.sampled_from([None, "clipnorm", "clipvalue", "global_clipnorm"]))
    if clip:
        config[clip] = draw(st.floats(0.01, 10))
    if draw(st.booleans()):
        config["weight_decay"] = draw(st.floats(0, 0.5))
    if ema and draw(st.booleans()):
        config.update(use_ema=True, ema_momentum=draw(unit),
                      ema_overwrite_frequency=draw(st.none() | st.integers(1, 4)))
    if accumulation and draw(st.booleans()):
        config["gradient_accumulation_steps"] = draw(st.integers(2, 4))
    if draw(st.booleans()):
        config["loss_scale_factor"] = draw(st.sampled_from([0.5, 2.0, 1024.0]))
    config["skip_nonfinite"] = draw(st.booleans())
    return config


@st.composite
def model(draw, dtypes=(np.float32, np.float64), max_weights=3, steps=(1, 5)):
    """(dtype, initial weights, gradient stream) with named shapes."""
    dtype = draw(st.sampled_from(dtypes))
    weight_shapes = draw(st.lists(shapes, min_size=1, max_size=max_weights))
    weights = [draw(arrays(dtype, s, 10.0)) for s in weight_shapes]
    n = draw(st.integers(*steps))
    grads = [[draw(arrays(dtype, s, 10.0)) for s in weight_shapes] for _ in range(n)]
    return dtype, weights, grads


def _named(weights):
    return [polyak.Variable(w, dtype=w.dtype, name=f"w{i}") for i, w in enumerate(weights)]


# --- the update rule --------------------------------------------------------------------------
@given(dtype=st.sampled_from(FLOATS), grad_dtype=st.sampled_from(FLOATS), shape=shapes, lr=rates, data=st.data())
def test_plain_sgd_is_exactly_w_minus_lr_g(dtype, grad_dtype, shape, lr, data):
    w = data.draw(arrays(dtype, shape))
    g = data.draw(arrays(grad_dtype, shape))
    rate = np.asarray(np.float32(lr), dtype=dtype)  # the rate is a float32 variable, cast to w's dtype
    with np.errstate(all="ignore"):
        expected = w - g.astype(dtype) * rate
    trained = w.copy()
    polyak.SGD(learning_rate=lr).apply([g], [trained])
    np.testing.assert_array_equal(trained, expected)
    assert trained.dtype == dtype


@given(config=configs(), run=model())
def test_stateless_apply_equals_apply(config, run):
    _, weights, stream = run
    stateful, pure = polyak.SGD(**config), polyak.SGD(**config)
    db.use_tier(stateful, "reference")  # the fused tier's agreement with this step is pinned in test_tiers.py
    in_place = [w.copy() for w in weights]
    pure.build([w.copy() for w in weights])
    params, values = [w.copy() for w in weights], [v.numpy() for v in pure.variables]
    for grads in stream:
        params, values = pure.stateless_apply(values, grads, params)
        stateful.apply(grads, in_place)
    for a, b in zip(params, in_place):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(values, stateful.variables):
        np.testing.assert_array_equal(a, b.numpy())


@given(config=configs(schedules_too=False, accumulation=False, ema=False), n=st.integers(2, 5),
       run=model(steps=(1, 1)))
def test_accumulating_n_identical_gradients_is_one_step(config, n, run):
    dtype, weights, ((grads),) = run
    once, accumulated = [w.copy() for w in weights], [w.copy() for w in weights]
    single = polyak.SGD(**config)
    single.apply(grads, once)
    summing = polyak.SGD(**config, gradient_accumulation_steps=n)
    for _ in range(n):
        summing.apply(grads, accumulated)
    eps = np.finfo(dtype).eps
    # the n - 1 sums and the division round: a few ulps of the gradient, times the rate
    scale = 1 + max(float(np.max(np.abs(x), initial=0)) for x in weights + grads)
    for a, b in zip(accumulated, once):
        np.testing.assert_allclose(a, b, rtol=8 * n * eps, atol=8 * n * eps * scale)
    assert int(summing.iterations) == 1 == int(single.iterations.numpy())


# --- configs and files ---------------------------------------------------------------------------
@given(config=configs())
def test_get_config_from_config_get_config_is_the_identity(config):
    optimizer = polyak.SGD(**config)
    first = optimizer.get_config()
    assert polyak.SGD.from_config(first).get_config() == first
    through_json = optimizers.deserialize(json.loads(json.dumps(optimizers.serialize(optimizer))))
    assert through_json.get_config() == first


@given(config=configs(), run=model(dtypes=FLOATS))
def test_save_then_load_is_the_identity(config, run):
    _, weights, stream = run
    variables = _named(weights)
    optimizer = polyak.SGD(**config)
    with np.errstate(all="ignore"):
        for grads in stream:
            optimizer.apply(grads, variables)
    fresh = _named([np.zeros_like(w) for w in weights])
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "run.ckpt")
        polyak.save(path, optimizer, variables)
        restored = polyak.load(path, variables=fresh)
    assert restored.get_config() == optimizer.get_config()
    assert [v.path for v in restored.variables] == [v.path for v in optimizer.variables]
    for a, b in zip(restored.variables + fresh, optimizer.variables + variables):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --- bad input: ValueError or TypeError, and nothing changed --------------------------------------
anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=4),
    st.complex_numbers(), st.lists(st.floats(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                             max_size=2),
    st.just(object()), st.just(np.float32(np.nan)), st.just(np.array([1.0, 2.0])), st.just(np.int64(2**62)),
    st.integers(min_value=2**62), st.just(10**400), st.just(np.uint64(2**64 - 1)),
)
ARGUMENTS = ["learning_rate", "momentum", "nesterov", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
             "use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
             "gradient_accumulation_steps", "name", "skip_nonfinite"]


@given(values=st.dictionaries(st.sampled_from(ARGUMENTS), anything, min_size=1, max_size=3))
def test_any_constructor_argument_is_accepted_or_refused_with_value_or_type_error(values):
    try:
        optimizer = polyak.SGD(**values)
    except (ValueError, TypeError):
        return
    w = np.ones(3, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer.apply([np.ones(3, np.float32)], [w])  # what is accepted also works


def _snapshot(optimizer, weights):
    return [w.copy() for w in weights] + [v.numpy().copy() for v in optimizer.variables]


def _assert_unchanged(optimizer, weights, snapshot):
    now = _snapshot(optimizer, weights)
    assert len(now) == len(snapshot)
    for a, b in zip(now, snapshot):
        np.testing.assert_array_equal(a, b)


gradient = st.one_of(
    anything,
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int32, np.complex64, np.bool_]), shapes),
    hnp.arrays(np.float32, st.sampled_from([(3, 2), (2, 3), (2,), (4,), (1, 2), ()]),
               elements=st.floats(width=32)),
)


@given(config=configs(), grads=st.lists(gradient, min_size=0, max_size=4))
def test_bad_gradients_raise_value_or_type_error_and_change_nothing(config, grads):
    weights = [np.ones((3, 2), np.float32), np.ones(2, np.float32), np.ones(4, np.float32)]
    optimizer = polyak.SGD(**config)
    optimizer.apply([np.ones_like(w) for w in weights], weights)
    before = _snapshot(optimizer, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            optimizer.apply(grads, weights)
        except (ValueError, TypeError):
            _assert_unchanged(optimizer, weights, before)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
config_dicts = st.fixed_dictionaries(
    {"class_name": st.sampled_from(["SGD", "sgd", "CosineDecay", "ExponentialDecay", "system", "Popen"])
     | st.text(max_size=6) | json_values},
    optional={
        "module": st.sampled_from(["os", "keras.optimizers", "builtins"]) | json_values,
        "registered_name": st.none() | st.text(max_size=8) | json_values,
        "config": st.dictionaries(st.sampled_from(ARGUMENTS + ["initial_learning_rate", "decay_steps"]),
                                  json_values | st.just({"class_name": "ExponentialDecay", "config": {}}),
                                  max_size=4) | json_values,
    },
)


@given(config=config_dicts)
def test_any_serialized_dict_builds_or_raises_value_or_type_error(config):
    for deserialize in (optimizers.deserialize, schedules.deserialize):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                deserialize(config)
        except (ValueError, TypeError):
            pass


@pytest.fixture(scope="module")
def checkpoint_bytes():
    weights = _named([np.ones((3, 2), np.float32), np.ones(2, np.float32)])
    optimizer = polyak.SGD(momentum=0.9, use_ema=True, skip_nonfinite=True)
    optimizer.apply([np.ones((3, 2), np.float32), np.ones(2, np.float32)], weights)
    with tempfile.TemporaryDirectory() as directory:
        polyak.save(os.path.join(directory, "run.ckpt"), optimizer, weights)
        with open(os.path.join(directory, "run.ckpt"), "rb") as file:
            return file.read()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**6))
def test_a_damaged_file_never_loads_partially(checkpoint_bytes, edits, cut):
    data = bytearray(checkpoint_bytes)
    for position, byte in edits:
        data[position % len(data)] = byte
    if cut is not None:
        data = data[: cut % len(data)]
    assume(bytes(data) != checkpoint_bytes)
    weights = _named([np.zeros((3, 2), np.float32), np.zeros(2, np.float32)])
    optimizer = polyak.SGD(momentum=0.9, use_ema=True, skip_nonfinite=True)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "run.ckpt")
        with open(path, "wb") as file:
            file.write(bytes(data))
        try:
            polyak.load(path, optimizer, weights)
        except ValueError:
            assert not optimizer.built and all((w.numpy() == 0).all() for w in weights)
            return
    # an edit the file does not depend on (the header's padding): the state is the saved one
    assert int(optimizer._iterations.numpy()) == 1 and (weights[0].numpy() != 0).all()


SCHEDULE_ARGUMENTS = {
    "ExponentialDecay": ["initial_learning_rate", "decay_steps", "decay_rate", "staircase"],
    "PiecewiseConstantDecay": ["boundaries", "values"],
    "PolynomialDecay": ["initial_learning_rate", "decay_steps", "end_learning_rate", "power", "cycle"],
    "InverseTimeDecay": ["initial_learning_rate", "decay_steps", "decay_rate", "staircase"],
    "CosineDecay": ["initial_learning_rate", "decay_steps", "alpha", "warmup_target", "warmup_steps"],
    "CosineDecayRestarts": ["initial_learning_rate", "first_decay_steps", "t_mul", "m_mul", "alpha"],
}
VALID = {"initial_learning_rate": 0.1, "decay_steps": 10, "first_decay_steps": 10, "decay_rate": 0.5,
         "boundaries": [5], "values": [0.1, 0.2]}


@given(name=st.sampled_from(sorted(SCHEDULE_ARGUMENTS)), data=st.data())
def test_any_schedule_argument_is_accepted_or_refused_with_value_or_type_error(name, data):
    arguments = SCHEDULE_ARGUMENTS[name]
    kwargs = {k: v for k, v in VALID.items() if k in arguments}
    changed = data.draw(st.sampled_from(arguments))
    big = st.integers(min_value=2**62)
    kwargs[changed] = data.draw(anything | st.lists(st.integers() | big, min_size=1, max_size=3)
                                | st.lists(st.floats(), min_size=1, max_size=3))
    try:
        built = getattr(schedules, name)(**kwargs)
    except (ValueError, TypeError):
        return
    for step in (0, 7, 2**40):
        np.asarray(built(np.int64(step)), np.float32)  # what is accepted also evaluates
