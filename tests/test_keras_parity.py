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
