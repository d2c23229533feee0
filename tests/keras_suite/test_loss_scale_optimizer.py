"""Keras's ``LossScaleOptimizer`` tests, adapted to polyak.

Vendored from ``keras/src/optimizers/loss_scale_optimizer_test.py`` of Keras 3.15.0
(https://github.com/keras-team/keras), Copyright The Keras Authors, licensed under the
Apache License 2.0 (http://www.apache.org/licenses/LICENSE-2.0).

Adapted: ``keras.src.optimizers`` -> ``polyak.optimizers``, ``backend.Variable`` ->
``polyak.Variable``, ``ops.array`` -> ``np.array``, ``absl`` parameters -> ``pytest`` ones,
``testing.TestCase`` assertions -> the NumPy/pytest helpers of ``_keras_testing`` (same
tolerances). Every number and assertion is Keras's.

Keras skips the stateful case on JAX and the stateless case on TensorFlow
(``_skip_test_for_stateless``); polyak's ``apply`` and ``stateless_apply`` both work on the NumPy
arrays these tests use, so both cases run and nothing is skipped. Every test of the file is
vendored.
"""

import numpy as np
import pytest

import polyak
from polyak import optimizers
from polyak.optimizers import SGD, LossScaleOptimizer

from keras_suite._keras_testing import assert_all_close, run_class_serialization_test

STATELESS = pytest.mark.parametrize("stateless", [True, False], ids=["stateless", "stateful"])


class TestLossScaleOptimizer:
    def test_config(self):
        inner_optimizer = SGD(
            learning_rate=0.5,
            momentum=0.06,
            nesterov=True,
            weight_decay=0.004,
        )
        optimizer = LossScaleOptimizer(inner_optimizer)
        run_class_serialization_test(optimizer, optimizers.serialize, optimizers.deserialize)

    def test_apply_with_no_vars(self):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(inner_optimizer)
        grads = [np.array([1.0, 6.0, 7.0, 2.0]) * optimizer.initial_scale]
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        optimizer.build(vars)
        optimizer.apply(grads)
        assert_all_close(
            vars[0], [0.5, -1.0, -0.5, 3.0], rtol=1e-4, atol=1e-4
        )

    @STATELESS
    def test_finite_step(self, stateless):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(inner_optimizer)
        grads = [np.array([1.0, 6.0, 7.0, 2.0]) * optimizer.initial_scale]
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        if stateless:
            optimizer.build(vars)
            vars, _ = optimizer.stateless_apply(
                [v.value for v in optimizer.variables],
                grads,
                [v.value for v in vars],
            )
        else:
            optimizer.apply(grads, vars)
        assert_all_close(
            vars[0], [0.5, -1.0, -0.5, 3.0], rtol=1e-4, atol=1e-4
        )

    @STATELESS
    def test_finite_step_with_inner_loss_scale(self, stateless):
        # Ensure that the inner loss scale does not interfere with the update.
        inner_optimizer = SGD(learning_rate=0.5, loss_scale_factor=100)
        optimizer = LossScaleOptimizer(inner_optimizer)
        grads = [np.array([1.0, 6.0, 7.0, 2.0]) * optimizer.initial_scale]
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        if stateless:
            optimizer.build(vars)
            vars, _ = optimizer.stateless_apply(
                [v.value for v in optimizer.variables],
                grads,
                [v.value for v in vars],
            )
        else:
            optimizer.apply(grads, vars)
        assert_all_close(
            vars[0], [0.5, -1.0, -0.5, 3.0], rtol=1e-4, atol=1e-4
        )

    @STATELESS
    def test_infinite_step(self, stateless):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(inner_optimizer)
        grads = [np.array([np.inf, np.inf, np.inf, np.inf])]
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        if stateless:
            optimizer.build(vars)
            vars, _ = optimizer.stateless_apply(
                [v.value for v in optimizer.variables],
                grads,
                [v.value for v in vars],
            )
        else:
            optimizer.apply(grads, vars)
        assert_all_close(vars[0], [1.0, 2.0, 3.0, 4.0], rtol=1e-4, atol=1e-4)

    @STATELESS
    def test_finite_step_with_overwrite(self, stateless):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(inner_optimizer)
        grads = [np.array([1.0, 6.0, 7.0, 2.0])]
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        vars[0].overwrite_with_gradient = True

        if stateless:
            optimizer.build(vars)
            vars, _ = optimizer.stateless_apply(
                [v.value for v in optimizer.variables],
                grads,
                [v.value for v in vars],
            )
        else:
            optimizer.apply(grads, vars)
        assert_all_close(vars[0], grads[0])

    @STATELESS
    def test_downscaling(self, stateless):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(inner_optimizer, initial_scale=400.0)
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        optimizer.build(vars)
        opt_var_values = [v.value for v in optimizer.variables]
        grads = [np.array([np.inf, np.inf, np.inf, np.inf])]
        for _ in range(4):
            if stateless:
                _, opt_var_values = optimizer.stateless_apply(
                    opt_var_values, grads, [v.value for v in vars]
                )
                for ref_v, v in zip(optimizer.variables, opt_var_values):
                    ref_v.assign(v)
            else:
                optimizer.apply(grads, vars)
        assert_all_close(optimizer.scale_loss(1.0), 25.0)

    @STATELESS
    def test_upscaling(self, stateless):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(
            inner_optimizer,
            initial_scale=2.0,
            dynamic_growth_steps=2,
        )
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        optimizer.build(vars)
        opt_var_values = [v.value for v in optimizer.variables]
        grads = [np.array([1.0, 6.0, 7.0, 2.0])]
        for _ in range(8):
            if stateless:
                _, opt_var_values = optimizer.stateless_apply(
                    opt_var_values, grads, [v.value for v in vars]
                )
                for ref_v, v in zip(optimizer.variables, opt_var_values):
                    ref_v.assign(v)
            else:
                optimizer.apply(grads, vars)
        assert_all_close(optimizer.scale_loss(1.0), 32.0)

    @STATELESS
    def test_iterations_update(self, stateless):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(inner_optimizer)
        vars = [polyak.Variable([1.0, 2.0, 3.0, 4.0])]
        optimizer.build(vars)
        opt_var_values = [v.value for v in optimizer.variables]
        grads = [np.array([1.0, 6.0, 7.0, 2.0])]

        assert optimizer.iterations.value == 0

        for i in range(3):
            if stateless:
                _, opt_var_values = optimizer.stateless_apply(
                    opt_var_values, grads, [v.value for v in vars]
                )
                for ref_v, v in zip(optimizer.variables, opt_var_values):
                    ref_v.assign(v)
            else:
                optimizer.apply(grads, vars)
            assert optimizer.iterations.value == i + 1

    def test_serialization(self):
        inner_optimizer = SGD(learning_rate=0.5)
        optimizer = LossScaleOptimizer(
            inner_optimizer,
            initial_scale=3.0,
            dynamic_growth_steps=2,
            name="test_opt",
        )
        config = optimizer.get_config()
        assert len(config) == 4
        assert config["name"] == "test_opt"
        assert config["initial_scale"] == 3.0
        assert config["dynamic_growth_steps"] == 2
        assert "inner_optimizer" in config
        LossScaleOptimizer.from_config(config)

    def test_init_dynamic_arg(self):
        inner_optimizer = SGD(learning_rate=0.5)

        # dynamic=True is supported
        LossScaleOptimizer(inner_optimizer, dynamic=True)

        # dynamic=False is not supported
        with pytest.raises(ValueError, match="set `loss_scale_factor`"):
            LossScaleOptimizer(inner_optimizer, dynamic=False)

    def test_init_unsupported_arg(self):
        inner_optimizer = SGD(learning_rate=0.5)
        with pytest.raises(ValueError, match="arguments: `foo`, `bar`"):
            LossScaleOptimizer(inner_optimizer, foo=True, bar=3)

    @pytest.mark.parametrize(
        "arg_name, arg_value",
        [
            ("weight_decay", 0.5),
            ("clipnorm", 0.5),
            ("global_clipnorm", 0.5),
            ("clipvalue", 0.5),
            ("use_ema", True),
            ("ema_momentum", 0.5),
            ("ema_overwrite_frequency", 2),
            ("loss_scale_factor", 0.5),
            ("gradient_accumulation_steps", 2),
        ],
    )
    def test_init_base_optimizer_unsupported_args(self, arg_name, arg_value):
        inner_optimizer = SGD(learning_rate=0.5)
        with pytest.raises(ValueError, match="on the `inner_optimizer`"):
            LossScaleOptimizer(inner_optimizer, **{arg_name: arg_value})

    def test_deserialization_backwards_compatibility(self):
        # Test deserializing with a config that has all the unsupported
        # arguments from the base optimizer (which are no longer serialized)
        config = {
            "name": "loss_scale_optimizer",
            "weight_decay": None,
            "clipnorm": None,
            "global_clipnorm": None,
            "clipvalue": None,
            "use_ema": False,
            "ema_momentum": 0.99,
            "ema_overwrite_frequency": None,
            "loss_scale_factor": None,
            "gradient_accumulation_steps": None,
            "inner_optimizer": {
                "module": "keras.optimizers",
                "class_name": "SGD",
                "config": {
                    "name": "SGD",
                    "learning_rate": 0.5,
                    "weight_decay": None,
                    "clipnorm": None,
                    "global_clipnorm": None,
                    "clipvalue": None,
                    "use_ema": False,
                    "ema_momentum": 0.99,
                    "ema_overwrite_frequency": None,
                    "loss_scale_factor": None,
                    "gradient_accumulation_steps": None,
                    "momentum": 0.0,
                    "nesterov": False,
                },
                "registered_name": None,
            },
            "initial_scale": 2.0,
            "dynamic_growth_steps": 2,
        }
        LossScaleOptimizer.from_config(config)
