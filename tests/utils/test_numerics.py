"""Direct tests of the shared numerical helpers (`keras_semkd.utils.numerics`)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_semkd.utils import numerics


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _np_pool(x, out_h, out_w):
    """PyTorch's adaptive average pooling by its bin definition, NHWC."""
    b, h, w, c = x.shape
    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


# -- pooling -----------------------------------------------------------------
def test_pool_matrix_rows_sum_to_one():
    for size, bins in ((5, 3), (3, 5), (8, 4), (7, 7)):
        m = numerics.adaptive_pool_matrix(size, bins)
        assert m.shape == (bins, size)
        assert m.dtype == np.float32
        np.testing.assert_allclose(m.sum(axis=1), np.ones(bins), rtol=1e-6)


@pytest.mark.parametrize(
    "shape,size",
    [((2, 8, 8, 3), 4), ((2, 8, 4, 2), (2, 2)), ((1, 5, 7, 2), (3, 2)),
     ((1, 2, 3, 1), (4, 5)), ((2, 6, 6, 1), 1)],
)
def test_adaptive_average_pool_matches_bins(shape, size):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    got = numerics.adaptive_average_pool(ops.convert_to_tensor(x), size)
    assert tuple(got.shape) == (shape[0], out_h, out_w, shape[3])
    np.testing.assert_allclose(_np(got), _np_pool(x, out_h, out_w),
                               atol=1e-6)


def test_adaptive_average_pool_same_size_is_identity_in_float32():
    x = np.arange(12, dtype="float64").reshape(1, 2, 2, 3)
    got = numerics.adaptive_average_pool(x, (2, 2))
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    np.testing.assert_array_equal(_np(got), x.astype("float32"))


def test_match_spatial_size_pools_the_larger_map_per_axis():
    f_s = np.ones((1, 8, 4, 2), "float32")
    f_t = np.ones((1, 4, 8, 3), "float32")
    s, t = numerics.match_spatial_size(f_s, f_t)
    assert tuple(s.shape) == (1, 4, 4, 2)
    assert tuple(t.shape) == (1, 4, 4, 3)


# -- normalization and flattening --------------------------------------------
def test_l2_normalize_torch_values_and_zero_gradient_finite():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype="float32")
    np.testing.assert_allclose(_np(numerics.l2_normalize(x)),
                               [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(
        _np(numerics.l2_normalize(x, axis=0)),
        [[1.0, 1.0], [0.0, 0.0]], atol=1e-7)


def test_flatten_features():
    x = np.zeros((2, 3, 4, 5), "float16")
    out = numerics.flatten_features(x)
    assert tuple(out.shape) == (2, 60)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


# -- PyTorch defaults ----------------------------------------------------------
def test_torch_default_initializers_bounds():
    kernel = numerics.torch_default_kernel()((3, 3, 4, 8))
    bias = numerics.torch_default_bias(36)((8,))
    bound = 1.0 / 6.0
    assert float(ops.max(ops.abs(kernel))) <= bound
    assert float(ops.max(ops.abs(bias))) <= bound
    assert numerics.BN_MOMENTUM == 0.9 and numerics.BN_EPSILON == 1e-5


def test_weight_decay_regularizer_is_half_coupled_l2():
    assert numerics.weight_decay_regularizer(0.0) is None
    reg = numerics.weight_decay_regularizer(5e-4)
    w = np.full((2, 2), 2.0, "float32")
    # loss = wd / 2 · ||w||² -> gradient wd · w, PyTorch SGD's decay.
    np.testing.assert_allclose(float(reg(w)), 5e-4 / 2 * 16.0, rtol=1e-6)


# -- validators ----------------------------------------------------------------
def test_check_weight_decay():
    assert numerics.check_weight_decay(0) == 0.0
    assert isinstance(numerics.check_weight_decay(5e-4), float)
    for bad in (-1e-4, float("inf"), float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match="Received: weight_decay="):
            numerics.check_weight_decay(bad)


def test_check_warmup_epochs():
    assert numerics.check_warmup_epochs(0) == 0
    assert numerics.check_warmup_epochs(np.int64(5)) == 5
    for bad in (-1, 2.5, "3"):
        with pytest.raises(ValueError, match="Received: warmup_epochs="):
            numerics.check_warmup_epochs(bad)


# -- warm-up -------------------------------------------------------------------
def test_linear_warmup():
    values = [float(numerics.linear_warmup(e, 4)) for e in range(6)]
    np.testing.assert_allclose(values, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert float(numerics.linear_warmup(7.0, 0)) == 1.0
