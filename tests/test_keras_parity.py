"""The last Keras-parity gaps, each checked against real Keras 3 side by side:
callable learning rates in configs, array and variable starting values of
schedules, the momentum message and the automatic-name reset."""

import json
import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")
import keras  # noqa: E402

import polyak  # noqa: E402
from polyak import optimizers, schedules  # noqa: E402


def plain_rate():
    return 0.05


@keras.saving.register_keras_serializable(package="parity")
@polyak.register(package="parity")
def registered_rate():
    return 0.02


def _quiet_config(optimizer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimizer.get_config()


# --- callable learning rates in configs -----------------------------------------------------------
@pytest.mark.parametrize("rate", [plain_rate, registered_rate, lambda: 0.3], ids=["named", "registered", "lambda"])
def test_callable_learning_rate_config_is_keras_config(rate):
    ours = _quiet_config(polyak.SGD(rate, momentum=0.9, name="opt"))
    theirs = _quiet_config(keras.optimizers.SGD(rate, momentum=0.9, name="opt"))
    assert ours == theirs
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))


def test_lambda_learning_rate_warns_when_written():
    with pytest.warns(UserWarning, match="lambda"):
        polyak.SGD(lambda: 0.3).get_config()


def test_registered_function_loads_from_our_config_and_from_keras_config():
    for config in (polyak.SGD(registered_rate).get_config(), keras.optimizers.SGD(registered_rate).get_config()):
        loaded = polyak.SGD.from_config(config)
        assert loaded._learning_rate is registered_rate and float(loaded.learning_rate) == 0.02
    again = optimizers.deserialize(json.loads(json.dumps(optimizers.serialize(polyak.SGD(registered_rate)))))
    assert again._learning_rate is registered_rate


def test_unregistered_function_loads_from_custom_objects_only():
    config = polyak.SGD(plain_rate).get_config()
    with pytest.raises(ValueError, match=r"Unknown learning-rate function 'plain_rate'.*polyak\.register"):
        polyak.SGD.from_config(config)
    loaded = optimizers.deserialize(optimizers.serialize(polyak.SGD(plain_rate)),
                                    custom_objects={"plain_rate": plain_rate})
    assert loaded._learning_rate is plain_rate


def test_lambda_config_is_never_loaded():
    config = _quiet_config(polyak.SGD(lambda: 0.3))
    for load in (lambda: polyak.SGD.from_config(config),
                 lambda: optimizers.deserialize({"class_name": "SGD", "config": config}),
                 lambda: polyak.SGD.from_config(_quiet_config(keras.optimizers.SGD(lambda: 0.3)))):
        with pytest.raises(ValueError, match=r"lambda.*polyak\.register"):
            load()


def test_other_callables_are_refused_as_keras_refuses_them():
    class Rate:
        def __call__(self):
            return 0.1

    with pytest.raises(TypeError):
        keras.optimizers.SGD(Rate()).get_config()
    with pytest.raises(TypeError, match="Cannot serialize the learning rate"):
        polyak.SGD(Rate()).get_config()


# --- schedules starting from a variable, an array or a tensor --------------------------------------
SCHEDULES = {
    "PolynomialDecay": (4,),
    "ExponentialDecay": (4, 0.5),
    "CosineDecay": (4,),
    "InverseTimeDecay": (4, 0.5),
    "CosineDecayRestarts": (4,),
}
STEPS = [0, 1, 2, 3, 5, 9]


def _values(schedule):
    return [np.float32(schedule(np.int64(step))) for step in STEPS]


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("start", [np.array(0.1, np.float32), np.float32(0.3), np.array(0.25)],
                         ids=["0-d float32", "float32 scalar", "0-d float64"])
def test_schedule_from_an_array_matches_keras_values_and_config(name, start):
    ours = getattr(schedules, name)(start, *SCHEDULES[name])
    theirs = getattr(keras.optimizers.schedules, name)(start, *SCHEDULES[name])
    np.testing.assert_array_equal(_values(ours), _values(theirs))
    assert ours.get_config() == theirs.get_config()
    assert schedules.serialize(ours) == keras.optimizers.schedules.serialize(theirs)
    again = schedules.deserialize(json.loads(json.dumps(schedules.serialize(ours))))
    np.testing.assert_array_equal(_values(again), _values(theirs))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_from_the_optimizer_rate_variable_reads_it_live_as_keras_does(name):
    ours_opt, their_opt = polyak.SGD(0.1), keras.optimizers.SGD(0.1)
    ours = getattr(schedules, name)(ours_opt.learning_rate, *SCHEDULES[name])
    theirs = getattr(keras.optimizers.schedules, name)(their_opt.learning_rate, *SCHEDULES[name])
    np.testing.assert_array_equal(_values(ours), _values(theirs))
    ours_opt.learning_rate.assign(0.2)
    their_opt.learning_rate.assign(0.2)
    np.testing.assert_array_equal(_values(ours), _values(theirs))
    assert ours.get_config()["initial_learning_rate"] == float(np.float32(0.2))  # Keras cannot serialize it


@pytest.mark.parametrize("make", ["torch", "jax"])
def test_schedule_from_a_tensor_matches_keras_from_the_same_number(make):
    if make == "torch":
        import torch
        start = torch.tensor(0.1)
    else:
        import jax.numpy as jnp
        start = jnp.asarray(0.1, jnp.float32)
    for name, args in SCHEDULES.items():
        ours = getattr(schedules, name)(start, *args)
        theirs = getattr(keras.optimizers.schedules, name)(np.array(0.1, np.float32), *args)
        np.testing.assert_array_equal(_values(ours), _values(theirs))
        assert schedules.serialize(ours) == keras.optimizers.schedules.serialize(theirs)


@pytest.mark.parametrize("start", [np.zeros(2, np.float32), np.array(np.nan), np.array(True), "0.1",
                                   lambda: polyak.Variable(np.zeros(2)), lambda: polyak.Variable(np.array(np.inf))],
                         ids=["vector", "nan", "bool", "string", "vector variable", "inf variable"])
def test_schedule_refuses_a_start_that_is_not_a_real_number(start):
    start = start() if callable(start) else start
    with pytest.raises((TypeError, ValueError), match="initial_learning_rate"):
        schedules.PolynomialDecay(start, 4)


# --- the momentum message and the name reset --------------------------------------------------------
@pytest.mark.parametrize("momentum", [-1.0, 1.5])
def test_momentum_is_refused_in_keras_words_then_the_value_received(momentum):
    with pytest.raises(ValueError) as theirs:
        keras.optimizers.SGD(momentum=momentum)
    with pytest.raises(ValueError) as ours:
        polyak.SGD(momentum=momentum)
    assert str(ours.value) == f"{theirs.value} Received: momentum={momentum!r}"


def test_momentum_nan_and_non_numbers_get_the_same_sentence():  # Keras lets NaN through; polyak does not
    with pytest.raises(ValueError, match=r"must be a float between \[0, 1\]\. Received: momentum=nan"):
        polyak.SGD(momentum=float("nan"))
    with pytest.raises(TypeError, match=r"must be a float between \[0, 1\]\. Received: momentum='0.9'"):
        polyak.SGD(momentum="0.9")


def test_clear_session_restarts_automatic_names_as_keras_does():
    for library, clear in ((polyak, polyak.clear_session), (keras, keras.utils.clear_session)):
        clear()
        first = [library.optimizers.SGD().name, library.optimizers.SGD().name, library.Variable(1.0).name]
        kept = library.optimizers.SGD()
        clear()
        again = [library.optimizers.SGD().name, library.optimizers.SGD().name, library.Variable(1.0).name]
        assert first == again == ["sgd", "sgd_1", "variable"]
        assert kept.name == "sgd_2"
    assert "clear_session" in polyak.__all__
