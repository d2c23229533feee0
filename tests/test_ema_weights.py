"""``Optimizer.ema_weights``: averages in for the block, raw weights back after it, always."""

import numpy as np
import pytest

import polyak


def _trained(use_ema=True, steps=3):
    kernel = polyak.Variable(np.array([[1.0, -2.0], [0.5, 0.0]], np.float32), name="kernel")
    bias = np.array([-0.0, 3.0], np.float32)  # a plain array, trained in place
    opt = polyak.SGD(learning_rate=0.1, momentum=0.9, use_ema=use_ema, ema_momentum=0.5)
    for k in range(steps):
        opt.apply([np.full((2, 2), k + 1.0, np.float32), np.array([1.0, -1.0], np.float32)], [kernel, bias])
    return opt, kernel, bias


def test_swaps_averages_in_and_raw_weights_back():
    opt, kernel, bias = _trained()
    raw_kernel, raw_bias = kernel.numpy(), bias.copy()
    with opt.ema_weights([kernel, bias]):
        np.testing.assert_array_equal(kernel.numpy(), opt._averages[0].numpy())
        np.testing.assert_array_equal(bias, opt._averages[1].numpy())
        assert not np.array_equal(kernel.numpy(), raw_kernel)
    np.testing.assert_array_equal(kernel.numpy(), raw_kernel)
    np.testing.assert_array_equal(bias, raw_bias)


def test_defaults_to_the_built_weights():
    opt, kernel, bias = _trained()
    raw = kernel.numpy()
    with opt.ema_weights():
        np.testing.assert_array_equal(kernel.numpy(), opt._averages[0].numpy())
    np.testing.assert_array_equal(kernel.numpy(), raw)


def test_restores_when_the_block_raises():
    opt, kernel, bias = _trained()
    raw_kernel, raw_bias = kernel.numpy(), bias.copy()
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with opt.ema_weights([kernel, bias]):
            kernel.assign(np.full((2, 2), 7.0))  # the block may even write to the weights
            raise RuntimeError("evaluation failed")
    np.testing.assert_array_equal(kernel.numpy(), raw_kernel)
    np.testing.assert_array_equal(bias, raw_bias)


def test_restores_bit_for_bit_including_signed_zero():
    opt, kernel, bias = _trained(steps=0)
    opt.build([kernel, bias])
    with opt.ema_weights([kernel, bias]):
        pass
    assert np.signbit(bias[0])


def test_same_result_as_finalize_inside_the_block():
    opt, kernel, bias = _trained()
    with opt.ema_weights([kernel, bias]):
        inside = (kernel.numpy(), bias.copy())
    opt.finalize_variable_values([kernel, bias])
    np.testing.assert_array_equal(inside[0], kernel.numpy())
    np.testing.assert_array_equal(inside[1], bias)


def test_without_ema_is_an_error_that_changes_nothing():
    opt, kernel, bias = _trained(use_ema=False)
    raw = kernel.numpy()
    with pytest.raises(ValueError, match="Received: use_ema=False"):
        with opt.ema_weights([kernel, bias]):
            pass
    np.testing.assert_array_equal(kernel.numpy(), raw)


def test_unbuilt_and_wrong_length_are_errors():
    with pytest.raises(ValueError, match="built"):
        with polyak.SGD(use_ema=True).ema_weights():
            pass
    opt, kernel, bias = _trained()
    raw = kernel.numpy()
    with pytest.raises(ValueError, match=r"length of model variables \(1\)"):
        with opt.ema_weights([kernel]):
            pass
    np.testing.assert_array_equal(kernel.numpy(), raw)


def test_a_bad_var_list_is_refused_before_any_swap():
    opt, kernel, bias = _trained()
    raw_kernel, raw_bias = kernel.numpy(), bias.copy()
    with pytest.raises(ValueError, match=r"`var_list\[1\]` must have the shape \(2,\).*Received: shape \(1,\)"):
        with opt.ema_weights([kernel, np.zeros(1, np.float32)]):
            pass
    read_only = bias.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        with opt.ema_weights([kernel, read_only]):
            pass
    np.testing.assert_array_equal(kernel.numpy(), raw_kernel)
    np.testing.assert_array_equal(bias, raw_bias)
