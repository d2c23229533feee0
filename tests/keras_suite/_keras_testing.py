"""The parts of ``keras.src.testing.TestCase`` the vendored Keras tests use, on NumPy.

Each helper keeps Keras's defaults (``assert_all_close``: ``atol=rtol=1e-6``) so the adapted
tests keep their original tolerances.
"""

import json

import numpy as np

import polyak


def to_numpy(x):
    """A NumPy array of an array, a ``polyak.Variable`` or a number (``backend.convert_to_numpy``)."""
    if isinstance(x, polyak.Variable):
        return x.numpy()
    return np.asarray(x)


def assert_all_close(actual, desired, atol=1e-6, rtol=1e-6):
    np.testing.assert_allclose(to_numpy(actual), to_numpy(desired), atol=atol, rtol=rtol)


def clipped_gradients(optimizer, grads):
    """The gradients as ``optimizer`` clips them (Keras's private ``_clip_gradients``), read from
    one public ``stateless_apply`` on float64 zeros: the step moves each weight by
    ``-learning_rate * clipped``."""
    grads = [np.asarray(g, dtype=np.float64) for g in grads]
    weights = [polyak.Variable(np.zeros_like(g), dtype="float64") for g in grads]
    optimizer.build(weights)
    new_weights, _ = optimizer.stateless_apply([v.value for v in optimizer.variables], grads,
                                               [w.value for w in weights])
    learning_rate = float(optimizer.learning_rate)
    return [-np.asarray(w) / learning_rate for w in new_weights]


def _to_json_with_tuples(value):
    """Keras's ``to_json_with_tuples``: JSON that tells tuples from lists."""

    def encode(obj):
        if isinstance(obj, tuple):
            return {"__class__": "tuple", "__value__": [encode(e) for e in obj]}
        if isinstance(obj, list):
            return [encode(e) for e in obj]
        if isinstance(obj, dict):
            return {key: encode(v) for key, v in obj.items()}
        return obj

    return json.dumps(encode(value), sort_keys=True, indent=4)


def _from_json_with_tuples(text):
    def decode(obj):
        if isinstance(obj, dict) and "__class__" in obj and "__value__" in obj:
            return tuple(obj["__value__"])
        return obj

    return json.loads(text, object_hook=decode)


def run_class_serialization_test(instance, serialize, deserialize):
    """Keras's ``run_class_serialization_test``: ``get_config``/``from_config`` and
    ``serialize``/``deserialize`` (through JSON) give back an equal config and the same
    attributes. ``serialize``/``deserialize`` are the namespace's (``polyak.optimizers`` or
    ``polyak.schedules``), standing in for Keras's ``serialize_keras_object``."""
    cls = type(instance)
    config_json = _to_json_with_tuples(instance.get_config())
    ref_dir = set(dir(instance))

    revived = cls.from_config(instance.get_config())
    assert _to_json_with_tuples(revived.get_config()) == config_json
    assert set(dir(revived)) == ref_dir

    serialized_json = _to_json_with_tuples(serialize(instance))
    revived = deserialize(_from_json_with_tuples(serialized_json))
    assert _to_json_with_tuples(revived.get_config()) == config_json
    assert set(dir(revived)) - {"__annotations__"} == ref_dir - {"__annotations__"}
    return revived


def assert_almost_equal(first, second, decimal=7):
    """``unittest``'s ``assertAlmostEqual(first, second, places=decimal)``."""
    assert round(abs(float(to_numpy(first)) - float(second)), decimal) == 0, (first, second)
