"""Keras's base-``Optimizer`` tests, adapted to polyak.

Vendored from ``keras/src/optimizers/optimizer_test.py`` of Keras 3.15.0
(https://github.com/keras-team/keras), Copyright The Keras Authors, licensed under the
Apache License 2.0 (http://www.apache.org/licenses/LICENSE-2.0).

Adapted: ``keras.src.optimizers`` -> ``polyak.optimizers``, ``backend.Variable`` ->
``polyak.Variable``, ``backend.convert_to_tensor`` and ``ops.*`` -> NumPy, ``testing.TestCase``
assertions -> the NumPy/pytest helpers of ``_keras_testing`` (same tolerances). Keras's private
state is read through polyak's public ``state_roles``: ``_model_variables_moving_average`` ->
``state_roles.role("average")``, ``_accumulated_gradients`` ->
``state_roles.role("gradient_accumulator")``, ``_iterations`` -> ``state_roles.iteration``;
``_clip_gradients`` -> ``clipped_gradients`` (the clipped gradient read from one public step).
``constraints.NonNeg()`` -> the same function written in NumPy. Every number and assertion
is Keras's.

Tests that exercise the base class through another Keras optimizer (Adam, AdamW) run it
through SGD, the one optimizer polyak has; the parametrized tests keep their ``"sgd"`` case:

- ``test_iterations_counter``, ``test_set_weights``, ``test_setting_lr_to_callable_untracks_lr_var``:
  Adam -> SGD (``set_weights`` with ``momentum=0.9`` so there is slot state to copy).
- ``test_get_method``: the ``"adamw"`` lookup is left out (polyak has no AdamW).
- ``test_optimizer_auto_naming``: the Adam and AdamW names are left out; the SGD names, the
  explicit name and the name kept through ``serialize``/``deserialize`` are checked with SGD.
- ``test_gradient_accumulation_with_weigth_decay``, ``test_pickleable_optimizers``: the ``"sgd"``
  case of Keras's eleven (the others name optimizers polyak does not have); the random
  gradients come from a seeded generator.
- ``test_ema_with_model_fit``: written as an equivalent without ``model.fit`` (polyak has no
  models): the same one-weight ``Dense(2, use_bias=False)`` with ones, MSE loss, two steps
  with the gradient computed by hand, then ``finalize_variable_values`` as ``fit`` does at the end.

Not vendored:

- ``test_tf_checkpointing``: ``tf.train.Checkpoint`` of a Keras model (TensorFlow only);
  polyak's checkpoints are tested in ``tests/test_checkpoint.py``.
- ``test_mixed_with_tf_variables``: ``tf.Variable`` beside Keras variables (TensorFlow only).
"""

import pickle

import numpy as np
import pytest

import polyak
from polyak import optimizers

from keras_suite._keras_testing import (
    assert_all_close,
    assert_almost_equal,
    clipped_gradients,
)


def _non_neg(w):
    """``keras.constraints.NonNeg``: ``w * (w >= 0)``."""
    return w * (w >= 0.0).astype(w.dtype)


class TestOptimizer:
    def test_iterations_counter(self):
        v = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = np.array([[1.0, 1.0], [1.0, 1.0]])
        optimizer = optimizers.SGD(learning_rate=1.0)
        assert_all_close(optimizer.iterations, 0)
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(optimizer.iterations, 1)
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(optimizer.iterations, 2)

    def test_empty_gradients(self):
        # Test no valid gradient
        v = polyak.Variable([[3.0, 4.0], [5.0, 6.0]])
        grads = None
        optimizer = optimizers.SGD(learning_rate=1.0)
        with pytest.raises(ValueError, match="No gradients provided for any variable."):
            optimizer.apply_gradients([(grads, v)])

        # Test filtering of empty gradients
        v2 = polyak.Variable([[3.0, 4.0], [5.0, 6.0]])
        grads2 = np.array([[1.0, 1.0], [1.0, 1.0]])
        optimizer = optimizers.SGD(learning_rate=1.0)
        with pytest.warns(Warning):
            optimizer.apply_gradients([(grads, v), (grads2, v2)])
        assert_all_close(v, [[3.0, 4.0], [5.0, 6.0]])
        assert_all_close(v2, [[2.0, 3.0], [4.0, 5.0]])

    def test_clip_args(self):
        optimizer = optimizers.SGD(learning_rate=1.0, clipnorm=0.1)
        assert optimizer.clipnorm == 0.1
        optimizer = optimizers.SGD(learning_rate=1.0, clipvalue=0.1)
        assert optimizer.clipvalue == 0.1
        optimizer = optimizers.SGD(learning_rate=1.0, global_clipnorm=0.1)
        assert optimizer.global_clipnorm == 0.1

        # Test invalid arguments
        with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can"):
            optimizers.SGD(
                learning_rate=1.0,
                clipnorm=0.1,
                clipvalue=0.1,
            )
        with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can"):
            optimizers.SGD(
                learning_rate=1.0,
                clipnorm=0.1,
                global_clipnorm=0.1,
            )

    def test_clip_norm(self):
        optimizer = optimizers.SGD(clipnorm=1)
        grad = np.array([100.0, 100.0])
        clipped_grad = clipped_gradients(optimizer, [grad])
        assert_all_close(clipped_grad[0], [2**0.5 / 2, 2**0.5 / 2])

    def test_clip_value(self):
        optimizer = optimizers.SGD(clipvalue=1)
        grad = np.array([100.0, 100.0])
        clipped_grad = clipped_gradients(optimizer, [grad])
        assert_all_close(clipped_grad[0], [1.0, 1.0])

    def test_global_clip_norm(self):
        optimizer = optimizers.SGD(global_clipnorm=1)
        grad = np.array([50.0, 100.0], dtype="float32")
        global_norm = np.linalg.norm(grad)
        clipped_grad = clipped_gradients(optimizer, [grad])
        assert_all_close(clipped_grad[0], grad / global_norm)

    def test_ema(self):
        v = polyak.Variable([[3.0, 4.0], [5.0, 6.0]])
        grads = np.array([[1.0, 1.0], [1.0, 1.0]])
        optimizer = optimizers.SGD(
            learning_rate=1.0,
            use_ema=True,
            ema_momentum=0.9,
            ema_overwrite_frequency=3,
        )
        optimizer.apply_gradients([(grads, v)])
        averages = optimizer.state_roles.role("average")
        assert_all_close(v, [[2.0, 3.0], [4.0, 5.0]])
        assert_all_close(
            averages[0],
            [[2.0, 3.0], [4.0, 5.0]],  # initialized after first step
        )
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(v, [[1.0, 2.0], [3.0, 4.0]])
        assert_all_close(
            averages[0],
            [[1.9, 2.9], [3.9, 4.9]],
        )
        optimizer.apply_gradients([(grads, v)])
        # Variables were overwritten with EMA
        assert_all_close(v, [[1.71, 2.71], [3.71, 4.71]])
        assert_all_close(
            averages[0],
            [[1.71, 2.71], [3.71, 4.71]],
        )

    def test_ema_with_model_fit(self):
        # Keras: Dense(2, kernel_initializer="ones", use_bias=False), loss="mse",
        # model.fit(ones((1, 1)), zeros((1, 1)), batch_size=1, epochs=2).
        x_train = np.ones((1, 1)).astype("float32")
        y_train = np.zeros((1, 1)).astype("float32")
        optimizer = optimizers.SGD(
            learning_rate=0.1, use_ema=True, ema_momentum=0.9
        )
        kernel = polyak.Variable(np.ones((1, 2)), name="kernel")
        for _ in range(2):
            error = x_train @ kernel.numpy() - y_train
            grad = x_train.T @ (2.0 * error / error.size)  # d mean(error**2) / d kernel
            optimizer.apply_gradients([(grad, kernel)])
        optimizer.finalize_variable_values([kernel])  # what fit does when training ends
        assert_all_close(
            optimizer.state_roles.role("average")[0].numpy(),
            [[0.891, 0.891]],
            atol=1e-5,
        )
        assert_all_close(
            kernel.numpy(),
            [[0.891, 0.891]],
            atol=1e-5,
        )

    def test_constraints_are_applied(self):
        v = polyak.Variable(np.random.random((2, 2)) - 1.0)
        v.constraint = _non_neg
        optimizer = optimizers.SGD(learning_rate=0.0001)
        grad = np.zeros((2, 2))
        optimizer.apply_gradients([(grad, v)])
        assert_almost_equal(np.min(v), 0.0)

    def test_get_method(self):
        obj = optimizers.get("sgd")
        assert isinstance(obj, optimizers.SGD)

        obj = optimizers.get(None)
        assert obj is None

        with pytest.raises(ValueError):
            optimizers.get("typo")

    def test_static_loss_scaling(self):
        v = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = np.array([[1.0, 2.0], [3.0, 4.0]]) * 1024.0
        optimizer = optimizers.SGD(learning_rate=1.0, loss_scale_factor=1024.0)
        optimizer.apply_gradients([(grads, v)])
        assert optimizer.scale_loss(1.0) == 1024.0
        assert_all_close(v, [[0.0, 0.0], [0.0, 0.0]])

    def test_set_weights(self):
        x = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        optimizer_1 = optimizers.SGD(momentum=0.9)
        grads = np.array([[1.0, 2.0], [3.0, 4.0]])
        optimizer_1.apply_gradients(zip([grads], [x]))
        optimizer_2 = optimizers.SGD(momentum=0.9)
        with pytest.raises(ValueError, match="You are calling*"):
            optimizer_2.set_weights(optimizer_1.variables)
        optimizer_2.build([x])
        optimizer_2.set_weights(optimizer_1.variables)
        for i in range(len(optimizer_1.variables)):
            assert_all_close(
                optimizer_1.variables[i],
                optimizer_2.variables[i],
            )

    def test_gradient_accumulation(self):
        v = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = np.array([[1.0, 1.0], [1.0, 1.0]])
        optimizer = optimizers.SGD(
            learning_rate=1.0, gradient_accumulation_steps=3
        )
        assert optimizer.gradient_accumulation_steps == 3

        # Iteration 1
        optimizer.apply_gradients([(grads, v)])
        accumulators = optimizer.state_roles.role("gradient_accumulator")
        raw_iterations = optimizer.state_roles.iteration
        assert_all_close(v, [[1.0, 2.0], [3.0, 4.0]])
        assert_all_close(
            accumulators[0], [[1.0, 1.0], [1.0, 1.0]]
        )
        assert_all_close(raw_iterations, 1)
        assert_all_close(optimizer.iterations, 0)

        # Iteration 2
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(v, [[1.0, 2.0], [3.0, 4.0]])
        assert_all_close(
            accumulators[0], [[2.0, 2.0], [2.0, 2.0]]
        )
        assert_all_close(raw_iterations, 2)
        assert_all_close(optimizer.iterations, 0)

        # Iteration 3
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(v, [[0.0, 1.0], [2.0, 3.0]])
        assert_all_close(
            accumulators[0], [[0.0, 0.0], [0.0, 0.0]]
        )
        assert_all_close(raw_iterations, 3)
        assert_all_close(optimizer.iterations, 1)

        # Iteration 4
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(v, [[0.0, 1.0], [2.0, 3.0]])
        assert_all_close(
            accumulators[0], [[1.0, 1.0], [1.0, 1.0]]
        )
        assert_all_close(raw_iterations, 4)
        assert_all_close(optimizer.iterations, 1)

    def test_callable_learning_rate(self):
        v = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = np.array([[1.0, 1.0], [1.0, 1.0]])
        optimizer = optimizers.SGD(learning_rate=lambda: 0.1)
        assert_all_close(optimizer.iterations, 0)
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(v, [[0.9, 1.9], [2.9, 3.9]])
        assert_all_close(optimizer.iterations, 1)

    def test_overwrite_with_gradient(self):
        v = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        v.overwrite_with_gradient = True
        v2 = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        grads = np.array([[1.0, 1.0], [1.0, 1.0]])
        grads2 = np.array([[1.0, 1.0], [1.0, 1.0]])

        optimizer = optimizers.SGD(learning_rate=1.0)
        optimizer.apply_gradients([(grads, v), (grads2, v2)])

        # `v` is overwritten by its gradient but `v2` is updated normally
        assert_all_close(v, [[1.0, 1.0], [1.0, 1.0]])
        assert_all_close(v2, [[0.0, 1.0], [2.0, 3.0]])

    def test_overwrite_with_gradient_with_gradient_accumulation(self):
        v = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        v.overwrite_with_gradient = True
        v2 = polyak.Variable([[1.0, 2.0], [3.0, 4.0]])
        grad_ones = np.array([[1.0, 1.0], [1.0, 1.0]])
        grad_twos = np.array([[2.0, 2.0], [2.0, 2.0]])
        optimizer = optimizers.SGD(
            learning_rate=1.0, gradient_accumulation_steps=2
        )

        # Iteration 1
        optimizer.apply_gradients([(grad_ones, v), (grad_ones, v2)])
        accumulators = optimizer.state_roles.role("gradient_accumulator")
        raw_iterations = optimizer.state_roles.iteration
        assert_all_close(raw_iterations, 1)
        assert_all_close(optimizer.iterations, 0)
        assert_all_close(v, [[1.0, 2.0], [3.0, 4.0]])
        assert_all_close(v2, [[1.0, 2.0], [3.0, 4.0]])
        assert_all_close(
            accumulators[0], [[1.0, 1.0], [1.0, 1.0]]
        )
        assert_all_close(
            accumulators[1], [[1.0, 1.0], [1.0, 1.0]]
        )

        # Iteration 2
        optimizer.apply_gradients([(grad_twos, v), (grad_twos, v2)])
        assert_all_close(raw_iterations, 2)
        assert_all_close(optimizer.iterations, 1)
        assert_all_close(v, [[2.0, 2.0], [2.0, 2.0]])
        assert_all_close(v2, [[-0.5, 0.5], [1.5, 2.5]])
        assert_all_close(
            accumulators[0], [[0.0, 0.0], [0.0, 0.0]]
        )
        assert_all_close(
            accumulators[1], [[0.0, 0.0], [0.0, 0.0]]
        )

        # Iteration 3
        optimizer.apply_gradients([(grad_ones, v), (grad_ones, v2)])
        assert_all_close(raw_iterations, 3)
        assert_all_close(optimizer.iterations, 1)
        assert_all_close(v, [[2.0, 2.0], [2.0, 2.0]])
        assert_all_close(v2, [[-0.5, 0.5], [1.5, 2.5]])
        assert_all_close(
            accumulators[0], [[1.0, 1.0], [1.0, 1.0]]
        )
        assert_all_close(
            accumulators[1], [[1.0, 1.0], [1.0, 1.0]]
        )

    @pytest.mark.parametrize("optimizer", ["sgd"])
    def test_gradient_accumulation_with_weigth_decay(self, optimizer):
        optimizer1 = optimizers.get(
            {"class_name": optimizer, "config": {"weight_decay": 0.05}}
        )
        optimizer3 = optimizers.get(
            {
                "class_name": optimizer,
                "config": {
                    "weight_decay": 0.05,
                    "gradient_accumulation_steps": 3,
                },
            }
        )
        variable1 = polyak.Variable([[0.9], [0.5]])
        variable3 = polyak.Variable([[0.9], [0.5]])
        rng = np.random.default_rng(0)

        for epoch in range(8):
            grads3 = rng.random([3, 2, 1]).astype("float32")

            grads1 = grads3.mean(axis=0)
            optimizer1.apply_gradients([(grads1, variable1)])

            for batch in range(3):
                grads3_ = grads3[batch]
                optimizer3.apply_gradients([(grads3_, variable3)])

        assert_all_close(variable1, variable3)

    def test_setting_lr_to_callable_untracks_lr_var(self):
        sgd = optimizers.SGD(learning_rate=0.001)
        assert len(sgd.variables) == 2
        sgd.learning_rate = optimizers.schedules.PolynomialDecay(
            sgd.learning_rate, 4
        )
        assert len(sgd.variables) == 1

    @pytest.mark.parametrize("optimizer", ["sgd"])
    def test_pickleable_optimizers(self, optimizer):
        optimizer = optimizers.get(optimizer)
        reloaded = pickle.loads(pickle.dumps(optimizer))

        assert optimizer.get_config() == reloaded.get_config()

    def test_optimizer_auto_naming(self):
        sgd_1 = optimizers.SGD()
        sgd_2 = optimizers.SGD()

        assert sgd_1.name == "sgd"
        assert sgd_2.name == "sgd_1"

        # Test explicit naming
        custom_sgd = optimizers.SGD(name="my_sgd")
        assert custom_sgd.name == "my_sgd"

        # Test serialization and deserialization preserves name
        config_sgd_2 = optimizers.serialize(sgd_2)
        reloaded_sgd_2 = optimizers.deserialize(config_sgd_2)
        assert reloaded_sgd_2.name == "sgd_1"

        config_custom = optimizers.serialize(custom_sgd)
        reloaded_custom = optimizers.deserialize(config_custom)
        assert reloaded_custom.name == "my_sgd"
