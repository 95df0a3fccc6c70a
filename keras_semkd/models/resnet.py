"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4).

Port of RepDistiller's `models/resnet.py` (He et al., "Deep Residual Learning
for Image Recognition", CIFAR variant): a 3x3 stem conv, three stages of
`n = (depth - 2) / 6` BasicBlocks (stride 1, 2, 2) and a linear classifier.
A 1x1 conv + BN shortcut is used whenever the stride or the width changes
(so resnet8x4 / resnet32x4 also have one in stage 1, 32 -> 64 channels).

Output keys (NHWC; shapes for a 32x32 input with `w = (16, 16, 32, 64)`,
or `(32, 64, 128, 256)` for the `x4` models; RepDistiller's name in []):

    "stem"             (32, 32, w0)    [f0] stem conv-BN-ReLU
    "stage1"           (32, 32, w1)    [f1] post-ReLU
    "stage2"           (16, 16, w2)    [f2] post-ReLU
    "stage3"           (8, 8, w3)      [f3] post-ReLU
    "stage{i}_preact"  as "stage{i}"   [f{i}, preact=True] the last block's
                                       residual sum, before its ReLU
    "embedding"        (w3,)           [f4] global average pool of stage3
    "logits"           (num_classes,)

Minimum input size: 4x4 (two stride-2 convs). RepDistiller's
`AvgPool2d(8)` is a global average pool at 32x32; here it is global for
every input size.

Init (as RepDistiller): convs kaiming-normal fan_out, BN gamma 1 / beta 0,
the classifier at PyTorch's default `nn.Linear` init.
"""

import keras

from keras_semkd.models import base
from keras_semkd.models.base import MODELS

MIN_INPUT_SIZE = 4


def _basic_block(x, planes, strides, *, name, weight_decay):
    """RepDistiller `BasicBlock`; returns `(output, preact)`."""
    shortcut = x
    out = base.conv_bn(
        x, planes, 3, strides=strides, name=f"{name}_1",
        weight_decay=weight_decay,
    )
    out = base.conv_bn(
        out, planes, 3, activation=False, name=f"{name}_2",
        weight_decay=weight_decay,
    )
    if strides != 1 or x.shape[-1] != planes:
        shortcut = base.conv_bn(
            x, planes, 1, strides=strides, activation=False,
            name=f"{name}_downsample", weight_decay=weight_decay,
        )
    preact = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return base.relu(preact, name=f"{name}_out"), preact


def cifar_resnet(
    depth,
    num_filters,
    *,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name="resnet",
):
    """Builds RepDistiller's `ResNet(depth, num_filters, "basicblock")`.

    Args:
        depth: `6 * n + 2`.
        num_filters: widths `(stem, stage1, stage2, stage3)`.
        num_classes: size of `"logits"`.
        input_shape: channels-last `(H, W, C)`, H and W at least 4.
        weight_decay: PyTorch-SGD-equivalent weight decay: every trainable
            weight (conv kernels, BN gamma/beta, classifier kernel and bias)
            gets `keras.regularizers.L2(weight_decay / 2)`, whose gradient is
            `weight_decay * w`. `0.0` adds no regularizer.
        name: model name.

    Returns:
        A functional `keras.Model` with the dict outputs of the module
        docstring.
    """
    num_classes, input_shape, weight_decay = base.check_args(
        num_classes, input_shape, weight_decay, MIN_INPUT_SIZE, name
    )
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"`depth` must be 6n+2 with n >= 1. Received: depth={depth}"
        )
    blocks = (depth - 2) // 6
    wd = weight_decay

    # Layers.
    inputs = base.image_input(input_shape)
    x = base.conv_bn(inputs, num_filters[0], 3, name="stem", weight_decay=wd)
    outputs = {"stem": x}
    preacts = {}
    for stage, planes in enumerate(num_filters[1:], start=1):
        for block in range(blocks):
            strides = 2 if (stage > 1 and block == 0) else 1
            x, preact = _basic_block(
                x, planes, strides, name=f"stage{stage}_block{block}",
                weight_decay=wd,
            )
        outputs[f"stage{stage}"] = x
        preacts[f"stage{stage}_preact"] = preact
    outputs.update(preacts)

    # Head (pool -> classifier) and functional model.
    return base.classification_model(inputs, x, outputs, num_classes,
                                     weight_decay=wd, name=name)


def _register(model_name, depth, num_filters, description):
    def builder(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
                name=model_name):
        return cifar_resnet(
            depth, num_filters, num_classes=num_classes,
            input_shape=input_shape, weight_decay=weight_decay, name=name,
        )

    builder.__name__ = model_name
    builder.__qualname__ = model_name
    builder.__doc__ = (
        f"{description}: `cifar_resnet({depth}, {num_filters})`; see "
        "`cifar_resnet` for the arguments."
    )
    MODELS.register(model_name, builder)
    return builder


_PLAIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

resnet8 = _register("resnet8", 8, _PLAIN, "CIFAR ResNet-8")
resnet14 = _register("resnet14", 14, _PLAIN, "CIFAR ResNet-14")
resnet20 = _register("resnet20", 20, _PLAIN, "CIFAR ResNet-20")
resnet32 = _register("resnet32", 32, _PLAIN, "CIFAR ResNet-32")
resnet44 = _register("resnet44", 44, _PLAIN, "CIFAR ResNet-44")
resnet56 = _register("resnet56", 56, _PLAIN, "CIFAR ResNet-56")
resnet110 = _register("resnet110", 110, _PLAIN, "CIFAR ResNet-110")
resnet8x4 = _register("resnet8x4", 8, _X4, "CIFAR ResNet-8, 4x wider")
resnet32x4 = _register("resnet32x4", 32, _X4, "CIFAR ResNet-32, 4x wider")
