"""ShuffleNetV1 for CIFAR (RepDistiller's `ShuffleV1`, groups=3).

Port of RepDistiller's `models/ShuffleNetv1.py` (Zhang et al., "ShuffleNet:
An Extremely Efficient Convolutional Neural Network for Mobile Devices"):
a 1x1 conv-BN-ReLU stem at full resolution, three stages of
`(4, 8, 4)` bottlenecks with output widths `(240, 480, 960)`, global average
pooling and a linear classifier.

Bottleneck (as RepDistiller, which differs slightly from the paper):
grouped 1x1 conv (1 group when the input has 24 channels) - BN - ReLU -
channel shuffle - 3x3 depthwise conv - BN - **ReLU** - grouped 1x1 conv - BN,
then `concat([out, avgpool3x3s2(x)])` for the first (stride-2) block of a
stage or `out + x` otherwise, then ReLU.

Output keys (NHWC; shapes for a 32x32 input; RepDistiller's name in []):

    "stem"             (32, 32, 24)    [f0] stem conv-BN-ReLU
    "stage1"           (16, 16, 240)   [f1] post-ReLU
    "stage2"           (8, 8, 480)     [f2] post-ReLU
    "stage3"           (4, 4, 960)     [f3] post-ReLU
    "stage{i}_preact"  as "stage{i}"   [f{i}, preact=True] the last block's
                                       sum (or concat), before its ReLU
    "embedding"        (960,)          [f4] global average pool of stage3
    "logits"           (num_classes,)

Minimum input size: 8x8 (three stride-2 blocks). RepDistiller's
`avg_pool2d(out, 4)` is a global average pool at 32x32; here it is global
for every input size.

Init (as RepDistiller, which does not re-initialise this model): PyTorch's
defaults, i.e. every conv and the classifier weight U(-1/sqrt(fan_in),
1/sqrt(fan_in)) with fan_in = k*k*in/groups, classifier bias likewise,
BN gamma 1 / beta 0.
"""

import keras

from keras_semkd.models import base
from keras_semkd.models.base import MODELS

MIN_INPUT_SIZE = 8


def _bottleneck(x, out_planes, strides, groups, *, name, weight_decay):
    """RepDistiller ShuffleNetV1 `Bottleneck`; returns `(output, preact)`."""
    wd = weight_decay
    in_planes = x.shape[-1]
    mid_planes = out_planes // 4
    g = 1 if in_planes == 24 else groups
    init = base.torch_default_kernel
    out = base.conv_bn(x, mid_planes, 1, groups=g, kernel_initializer=init(),
                       name=f"{name}_1", weight_decay=wd)
    if g > 1:
        out = base.ChannelShuffle(g, name=f"{name}_shuffle")(out)
    out = base.depthwise_conv2d(out, strides=strides, init="torch_default",
                                name=f"{name}_dw_conv", weight_decay=wd)
    out = base.batch_norm(out, name=f"{name}_dw_bn", weight_decay=wd)
    out = base.relu(out, name=f"{name}_dw_relu")
    out = base.conv_bn(out, out_planes, 1, groups=groups, activation=False,
                       kernel_initializer=init(), name=f"{name}_3",
                       weight_decay=wd)
    if strides == 2:
        shortcut = base.avg_pool_3x3_s2(x, name=f"{name}_shortcut_pool")
        preact = keras.layers.Concatenate(name=f"{name}_concat")(
            [out, shortcut]
        )
    else:
        preact = keras.layers.Add(name=f"{name}_add")([out, x])
    return base.relu(preact, name=f"{name}_out"), preact


def shufflenet_v1(
    out_planes=(240, 480, 960),
    num_blocks=(4, 8, 4),
    groups=3,
    *,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name="ShuffleV1",
):
    """Builds RepDistiller's `ShuffleNet(cfg, num_classes)`.

    Args:
        out_planes: output width of each stage.
        num_blocks: number of bottlenecks of each stage.
        groups: groups of the 1x1 convs and of the channel shuffle.
        num_classes: size of `"logits"`.
        input_shape: channels-last `(H, W, C)`, H and W at least 8.
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

    # Layers.
    inputs = base.image_input(input_shape)
    x = base.conv_bn(inputs, 24, 1,
                     kernel_initializer=base.torch_default_kernel(),
                     name="stem", weight_decay=wd)
    outputs = {"stem": x}
    preacts = {}
    for stage, (planes, blocks) in enumerate(zip(out_planes, num_blocks), 1):
        for block in range(blocks):
            # The first block concatenates its input (avg-pooled) to its
            # output, so its branch produces `planes - in_planes` channels.
            strides = 2 if block == 0 else 1
            branch = planes - x.shape[-1] if block == 0 else planes
            x, preact = _bottleneck(
                x, branch, strides, groups, name=f"stage{stage}_block{block}",
                weight_decay=wd,
            )
        outputs[f"stage{stage}"] = x
        preacts[f"stage{stage}_preact"] = preact
    outputs.update(preacts)

    # Head (pool -> classifier) and functional model.
    return base.classification_model(inputs, x, outputs, num_classes,
                                     weight_decay=wd, name=name)


@MODELS.register("ShuffleV1")
def shuffle_v1(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
               name="ShuffleV1"):
    """RepDistiller's `ShuffleV1` (widths 240/480/960, blocks 4/8/4,
    groups 3); see `shufflenet_v1`."""
    return shufflenet_v1(
        num_classes=num_classes, input_shape=input_shape,
        weight_decay=weight_decay, name=name,
    )
