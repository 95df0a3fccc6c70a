"""ImageNet-style ResNet adapted to CIFAR (RepDistiller's `ResNet50`).

Port of RepDistiller's `models/resnetv2.py`: the torchvision ResNet layout
(four stages of widths 64/128/256/512, stride 1, 2, 2, 2) with a 3x3
stride-1 stem and no stem max-pool, so a 32x32 input ends at 4x4. Only
`ResNet50` (Bottleneck blocks `(3, 4, 6, 3)`, expansion 4) is registered;
`imagenet_style_resnet` also builds the BasicBlock variants.

Bottleneck: 1x1 - BN - ReLU - 3x3 (stride) - BN - ReLU - 1x1 (x4) - BN, plus
the identity or a 1x1 conv-BN shortcut, then ReLU.

Output keys (NHWC; shapes for a 32x32 input, ResNet50; RepDistiller's
name in []):

    "stem"             (32, 32, 64)    [f0] stem conv-BN-ReLU
    "stage1"           (32, 32, 256)   [f1] post-ReLU
    "stage2"           (16, 16, 512)   [f2] post-ReLU
    "stage3"           (8, 8, 1024)    [f3] post-ReLU
    "stage4"           (4, 4, 2048)    [f4] post-ReLU
    "stage{i}_preact"  as "stage{i}"   [f{i}, preact=True] the last block's
                                       residual sum, before its ReLU
    "embedding"        (2048,)         [f5] global average pool of stage4
    "logits"           (num_classes,)

Minimum input size: 8x8 (three stride-2 convs).

Init (as RepDistiller): convs kaiming-normal fan_out, BN gamma 1 / beta 0,
classifier at PyTorch's default `nn.Linear` init. RepDistiller's
`zero_init_residual` defaults to False and is not reproduced.
"""

import keras

from keras_semkd.models import base
from keras_semkd.models.base import MODELS

MIN_INPUT_SIZE = 8


def _basic_block(x, planes, strides, *, name, weight_decay):
    """RepDistiller resnetv2 `BasicBlock`; returns `(output, preact)`."""
    wd = weight_decay
    out = base.conv_bn(x, planes, 3, strides=strides, name=f"{name}_1",
                       weight_decay=wd)
    out = base.conv_bn(out, planes, 3, activation=False, name=f"{name}_2",
                       weight_decay=wd)
    return _merge(x, out, planes, strides, name=name, weight_decay=wd)


def _bottleneck(x, planes, strides, *, name, weight_decay):
    """RepDistiller resnetv2 `Bottleneck`; returns `(output, preact)`."""
    wd = weight_decay
    out = base.conv_bn(x, planes, 1, name=f"{name}_1", weight_decay=wd)
    out = base.conv_bn(out, planes, 3, strides=strides, name=f"{name}_2",
                       weight_decay=wd)
    out = base.conv_bn(out, planes * 4, 1, activation=False, name=f"{name}_3",
                       weight_decay=wd)
    return _merge(x, out, planes * 4, strides, name=name, weight_decay=wd)


def _merge(x, out, out_planes, strides, *, name, weight_decay):
    shortcut = x
    if strides != 1 or x.shape[-1] != out_planes:
        shortcut = base.conv_bn(
            x, out_planes, 1, strides=strides, activation=False,
            name=f"{name}_shortcut", weight_decay=weight_decay,
        )
    preact = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return base.relu(preact, name=f"{name}_out"), preact


BLOCKS = {"basic": _basic_block, "bottleneck": _bottleneck}


def imagenet_style_resnet(
    block,
    num_blocks,
    *,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name="resnet",
):
    """Builds RepDistiller's `resnetv2.ResNet(block, num_blocks)`.

    Args:
        block: `"basic"` (ResNet18/34) or `"bottleneck"` (ResNet50/101/152).
        num_blocks: blocks per stage, e.g. `(3, 4, 6, 3)`.
        num_classes: size of `"logits"`.
        input_shape: channels-last `(H, W, C)`, H and W at least 8.
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
    if block not in BLOCKS:
        raise ValueError(
            f"`block` must be one of {sorted(BLOCKS)}. "
            f"Received: block={block!r}"
        )
    make_block = BLOCKS[block]
    wd = weight_decay

    # Layers.
    inputs = base.image_input(input_shape)
    x = base.conv_bn(inputs, 64, 3, name="stem", weight_decay=wd)
    outputs = {"stem": x}
    preacts = {}
    for stage, (planes, blocks) in enumerate(
        zip((64, 128, 256, 512), num_blocks), start=1
    ):
        for i in range(blocks):
            strides = 2 if (stage > 1 and i == 0) else 1
            x, preact = make_block(x, planes, strides,
                                   name=f"stage{stage}_block{i}",
                                   weight_decay=wd)
        outputs[f"stage{stage}"] = x
        preacts[f"stage{stage}_preact"] = preact
    outputs.update(preacts)

    # Head (pool -> classifier) and functional model.
    return base.classification_model(inputs, x, outputs, num_classes,
                                     weight_decay=wd, name=name)


@MODELS.register("ResNet50")
def resnet50(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
             name="ResNet50"):
    """RepDistiller's `ResNet50` (Bottleneck, `(3, 4, 6, 3)`); see
    `imagenet_style_resnet`."""
    return imagenet_style_resnet(
        "bottleneck", (3, 4, 6, 3), num_classes=num_classes,
        input_shape=input_shape, weight_decay=weight_decay, name=name,
    )
