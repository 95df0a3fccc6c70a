"""Tests of the zoo's shared layers and PyTorch-equivalent conventions."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_semkd.models import base


def _np(x):
    return ops.convert_to_numpy(x)


def _torch_shuffle_nhwc(x, groups):
    """PyTorch's NCHW `view(N, g, C//g, H, W).permute(0, 2, 1, 3, 4)`
    applied to an NHWC array, written with explicit index arithmetic."""
    n, h, w, c = x.shape
    out = np.empty_like(x)
    per_group = c // groups
    for i in range(groups):
        for j in range(per_group):
            out[..., j * groups + i] = x[..., i * per_group + j]
    return out


@pytest.mark.parametrize("groups, channels", [(2, 8), (3, 12), (1, 5)])
def test_channel_shuffle_matches_pytorch(groups, channels):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, channels))
    x = x.astype("float32")
    layer = base.ChannelShuffle(groups)
    np.testing.assert_array_equal(_np(layer(x)),
                                  _torch_shuffle_nhwc(x, groups))
    assert layer.compute_output_shape((None, 3, 4, channels)) == (
        None, 3, 4, channels)


def test_channel_shuffle_config_and_errors():
    layer = base.ChannelShuffle(3, name="shuffle")
    clone = base.ChannelShuffle.from_config(layer.get_config())
    assert clone.groups == 3 and clone.name == "shuffle"
    with pytest.raises(ValueError, match="Received: groups=0"):
        base.ChannelShuffle(0)
    with pytest.raises(ValueError, match="divisible by groups=3"):
        base.ChannelShuffle(3)(np.zeros((1, 2, 2, 4), "float32"))


def test_channel_split():
    x = np.arange(2 * 2 * 2 * 7, dtype="float32").reshape(2, 2, 2, 7)
    layer = base.ChannelSplit(0.5)
    a, b = layer(x)
    np.testing.assert_array_equal(_np(a), x[..., :3])
    np.testing.assert_array_equal(_np(b), x[..., 3:])
    assert layer.compute_output_shape((None, 2, 2, 7)) == [
        (None, 2, 2, 3), (None, 2, 2, 4)]
    assert base.ChannelSplit.from_config(layer.get_config()).ratio == 0.5
    with pytest.raises(ValueError, match="Received: ratio=1.5"):
        base.ChannelSplit(1.5)


def test_grouped_pointwise_conv_equals_grouped_conv2d():
    x = np.random.default_rng(1).standard_normal((2, 5, 6, 12))
    x = x.astype("float32")
    layer = base.GroupedPointwiseConv2D(9, 3)
    y = layer(x)
    assert tuple(layer.kernel.shape) == (1, 1, 4, 9)
    reference = keras.layers.Conv2D(9, 1, groups=3, use_bias=False)
    reference.build(x.shape)
    reference.kernel.assign(layer.kernel)
    np.testing.assert_allclose(_np(y), _np(reference(x)), rtol=1e-5,
                               atol=1e-5)
    clone = base.GroupedPointwiseConv2D.from_config(layer.get_config())
    assert (clone.filters, clone.groups) == (9, 3)
    with pytest.raises(ValueError, match="divisible by `groups`"):
        base.GroupedPointwiseConv2D(10, 3)


def _delta_conv(x, strides):
    """A 3x3 conv whose kernel copies the top-left tap of its window."""
    inputs = keras.Input(x.shape[1:])
    out = base.conv2d(inputs, 1, 3, strides=strides, name="c",
                      weight_decay=0.0)
    model = keras.Model(inputs, out)
    kernel = np.zeros((3, 3, 1, 1), "float32")
    kernel[0, 0] = 1.0
    model.get_layer("c").kernel.assign(kernel)
    return _np(model(x))[..., 0]


@pytest.mark.parametrize("size", [6, 7])
def test_strided_conv_pads_like_pytorch(size):
    """PyTorch `padding=1` is symmetric: output (i, j) of a stride-2 3x3
    conv starts at input (2i - 1, 2j - 1), also for even sizes."""
    x = np.arange(size * size, dtype="float32").reshape(1, size, size, 1) + 1
    padded = np.pad(x[0, ..., 0], 1)
    expected = padded[0:size:2, 0:size:2][None]
    out = _delta_conv(x, strides=2)
    np.testing.assert_array_equal(out, expected)
    out1 = _delta_conv(x, strides=1)
    np.testing.assert_array_equal(out1, padded[:size, :size][None])


def test_avg_pool_counts_padding_like_pytorch():
    """`nn.AvgPool2d(3, 2, padding=1)` divides by 9 at the borders too."""
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, base.avg_pool_3x3_s2(inputs, name="p"))
    out = _np(model(np.ones((1, 4, 4, 1), "float32")))[0, ..., 0]
    np.testing.assert_allclose(out, [[4 / 9, 6 / 9], [6 / 9, 1.0]],
                               rtol=1e-6)


def test_regularizer_is_half_weight_decay():
    assert base.weight_decay_regularizer(0.0) is None
    reg = base.weight_decay_regularizer(5e-4)
    w = np.full((3,), 2.0, "float32")
    # 0.5 * wd * ||w||^2, whose gradient is wd * w.
    np.testing.assert_allclose(float(_np(reg(w))), 0.5 * 5e-4 * 12.0,
                               rtol=1e-6)
