"""MobileNetV2 for CIFAR (RepDistiller's `mobile_half`: t=6, width 0.5).

Port of RepDistiller's `models/mobilenetv2.py` (`mobilenetv2_T_w(6, 0.5)`,
from "Knowledge Distillation via Route Constrained Optimization"): a
stride-2 3x3 conv-BN-ReLU stem, seven groups of inverted residual blocks
(1x1 expand - BN - ReLU - 3x3 depthwise - BN - ReLU - 1x1 project - BN,
identity shortcut when stride 1 and widths match; plain ReLU, not ReLU6;
the t=1 group keeps its expand conv), a 1x1 conv-BN-ReLU to 1280 channels,
global average pooling and a linear classifier.

Groups `(t, c, n, s)` before width scaling: (1, 16, 1, 1), (6, 24, 2, 1),
(6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1);
`c` is scaled to `int(c * 0.5)`, the last conv keeps 1280 channels.

Output keys (NHWC; shapes for a 32x32 input; RepDistiller's name in []).
The stage features are the outputs of RepDistiller's block groups 1, 2, 4
and 6, which end with the linear (BN, no ReLU) projection; RepDistiller
returns the same tensors for `preact=True`, so there are no `_preact` keys:

    "stem"       (16, 16, 16)    [f0] stem conv-BN-ReLU
    "stage1"     (16, 16, 12)    [f1] after group 1
    "stage2"     (8, 8, 16)      [f2] after group 2
    "stage3"     (4, 4, 48)      [f3] after group 4
    "stage4"     (2, 2, 160)     [f4] after group 6
    "embedding"  (1280,)         [f5] global pool of the 1280-channel conv
    "logits"     (num_classes,)

Minimum input size: 16x16 (four stride-2 convs). RepDistiller requires a
multiple of 32 for its `AvgPool2d(H // 16, ceil_mode=True)`, which is a
global average pool at 32x32; here pooling is global for every input size.

Init (as RepDistiller): convs N(0, sqrt(2 / (k*k*out_channels))) -- for the
depthwise convs `out_channels` is the channel count, which Keras' own fan
computation would get wrong, so it is spelled out -- BN gamma 1 / beta 0,
classifier N(0, 0.01) with zero bias.
"""

import keras

from keras_semkd.models import base
from keras_semkd.models.base import MODELS

MIN_INPUT_SIZE = 16

# (expand ratio t, output channels c, repeats n, first stride s).
SETTINGS = (
    (1, 16, 1, 1),
    ("T", 24, 2, 1),
    ("T", 32, 3, 2),
    ("T", 64, 4, 2),
    ("T", 96, 3, 1),
    ("T", 160, 3, 2),
    ("T", 320, 1, 1),
)
# Block groups after which RepDistiller takes f1 .. f4.
FEATURE_GROUPS = (1, 2, 4, 6)


def _inverted_residual(x, out_channels, strides, expand_ratio, *, name,
                       weight_decay):
    wd = weight_decay
    in_channels = x.shape[-1]
    hidden = in_channels * expand_ratio
    out = base.conv_bn(x, hidden, 1, name=f"{name}_expand", weight_decay=wd)
    out = base.depthwise_conv2d(out, strides=strides, name=f"{name}_dw_conv",
                                weight_decay=wd)
    out = base.batch_norm(out, name=f"{name}_dw_bn", weight_decay=wd)
    out = base.relu(out, name=f"{name}_dw_relu")
    out = base.conv_bn(out, out_channels, 1, activation=False,
                       name=f"{name}_project", weight_decay=wd)
    if strides == 1 and in_channels == out_channels:
        out = keras.layers.Add(name=f"{name}_add")([x, out])
    return out


def mobilenetv2(
    expand_ratio=6,
    width_mult=0.5,
    *,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name="MobileNetV2",
):
    """Builds RepDistiller's `mobilenetv2_T_w(T, W, num_classes)`.

    Args:
        expand_ratio: `T`, the expansion of every group but the first.
        width_mult: `W`, the channel multiplier.
        num_classes: size of `"logits"`.
        input_shape: channels-last `(H, W, C)`, H and W at least 16.
        weight_decay: PyTorch-SGD-equivalent weight decay: every trainable
            weight (conv and depthwise kernels, BN gamma/beta, classifier
            kernel and bias) gets `keras.regularizers.L2(weight_decay / 2)`,
            whose gradient is `weight_decay * w`. `0.0` adds no regularizer.
        name: model name.

    Returns:
        A functional `keras.Model` with the dict outputs of the module
        docstring.
    """
    num_classes, input_shape, weight_decay = base.check_args(
        num_classes, input_shape, weight_decay, MIN_INPUT_SIZE, name
    )
    wd = weight_decay
    last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280

    # Layers.
    inputs = base.image_input(input_shape)
    x = base.conv_bn(inputs, int(32 * width_mult), 3, strides=2, name="stem",
                     weight_decay=wd)
    outputs = {"stem": x}
    for group, (t, c, n, s) in enumerate(SETTINGS):
        t = expand_ratio if t == "T" else t
        for block in range(n):
            x = _inverted_residual(
                x, int(c * width_mult), s if block == 0 else 1, t,
                name=f"group{group}_block{block}", weight_decay=wd,
            )
        if group in FEATURE_GROUPS:
            outputs[f"stage{FEATURE_GROUPS.index(group) + 1}"] = x
    x = base.conv_bn(x, last_channels, 1, name="head", weight_decay=wd)

    # Head (pool -> classifier) and functional model.
    return base.classification_model(
        inputs, x, outputs, num_classes, weight_decay=wd, name=name,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )


@MODELS.register("MobileNetV2")
def mobile_half(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
                name="MobileNetV2"):
    """RepDistiller's `mobile_half` (T=6, width 0.5); see `mobilenetv2`."""
    return mobilenetv2(
        6, 0.5, num_classes=num_classes, input_shape=input_shape,
        weight_decay=weight_decay, name=name,
    )
