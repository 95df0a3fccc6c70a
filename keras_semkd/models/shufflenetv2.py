"""ShuffleNetV2 for CIFAR (RepDistiller's `ShuffleV2`, net size 1).

Port of RepDistiller's `models/ShuffleNetv2.py` (Ma et al., "ShuffleNet V2:
Practical Guidelines for Efficient CNN Architecture Design"): a 1x1
conv-BN-ReLU stem at full resolution, three stages of one down-sampling
block plus `(3, 7, 3)` basic blocks with widths `(116, 232, 464)`, a 1x1
conv-BN-ReLU to 1024 channels, global average pooling and a linear classifier.

* Down block: left `dw3x3 s2 - BN - 1x1 - BN - ReLU`, right
  `1x1 - BN - ReLU - dw3x3 s2 - BN - 1x1 - BN - ReLU`, concat, shuffle(2).
* Basic block: split channels in halves `x1, x2`; `x2 -> 1x1 - BN - ReLU -
  dw3x3 - BN - 1x1 - BN (preact) - ReLU`; concat `[x1, out]`, shuffle(2).

Output keys (NHWC; shapes for a 32x32 input; RepDistiller's name in []):

    "stem"             (32, 32, 24)    [f0] stem conv-BN-ReLU
    "stage1"           (16, 16, 116)   [f1] last block's shuffled output
    "stage2"           (8, 8, 232)     [f2] idem
    "stage3"           (4, 4, 464)     [f3] idem
    "stage{i}_preact"  as "stage{i}"   [f{i}, preact=True] the last block's
                                       concat([x1, branch before ReLU]),
                                       not shuffled
    "embedding"        (1024,)         [f4] global pool of the 1024 conv
    "logits"           (num_classes,)

Note, faithful to RepDistiller: a stage output is *channel-shuffled* while
its `_preact` twin is *not* (RepDistiller returns the pre-shuffle concat),
so `stage{i} == ChannelShuffle(2)(relu(stage{i}_preact))`, not
`relu(stage{i}_preact)`.

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

# RepDistiller's `configs`: net_size -> (stage widths + last conv, blocks).
CONFIGS = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


def _conv(x, filters, *, name, weight_decay):
    return base.conv2d(x, filters, 1,
                       kernel_initializer=base.torch_default_kernel(),
                       name=name, weight_decay=weight_decay)


def _dw(x, strides, *, name, weight_decay):
    return base.depthwise_conv2d(x, strides=strides, init="torch_default",
                                 name=name, weight_decay=weight_decay)


def _bn(x, *, name, weight_decay, activation=False):
    x = base.batch_norm(x, name=f"{name}_bn", weight_decay=weight_decay)
    if activation:
        x = base.relu(x, name=f"{name}_relu")
    return x


def _down_block(x, out_channels, *, name, weight_decay):
    wd = weight_decay
    mid = out_channels // 2
    # Left branch.
    left = _dw(x, 2, name=f"{name}_left_dw", weight_decay=wd)
    left = _bn(left, name=f"{name}_left_dw", weight_decay=wd)
    left = _conv(left, mid, name=f"{name}_left_pw", weight_decay=wd)
    left = _bn(left, name=f"{name}_left_pw", weight_decay=wd, activation=True)
    # Right branch.
    right = _conv(x, mid, name=f"{name}_right_pw1", weight_decay=wd)
    right = _bn(right, name=f"{name}_right_pw1", weight_decay=wd,
                activation=True)
    right = _dw(right, 2, name=f"{name}_right_dw", weight_decay=wd)
    right = _bn(right, name=f"{name}_right_dw", weight_decay=wd)
    right = _conv(right, mid, name=f"{name}_right_pw2", weight_decay=wd)
    right = _bn(right, name=f"{name}_right_pw2", weight_decay=wd,
                activation=True)
    out = keras.layers.Concatenate(name=f"{name}_concat")([left, right])
    return base.ChannelShuffle(2, name=f"{name}_shuffle")(out)


def _basic_block(x, *, name, weight_decay):
    """RepDistiller ShuffleNetV2 `BasicBlock`; returns `(output, preact)`."""
    wd = weight_decay
    x1, x2 = base.ChannelSplit(0.5, name=f"{name}_split")(x)
    channels = x2.shape[-1]
    out = _conv(x2, channels, name=f"{name}_pw1", weight_decay=wd)
    out = _bn(out, name=f"{name}_pw1", weight_decay=wd, activation=True)
    out = _dw(out, 1, name=f"{name}_dw", weight_decay=wd)
    out = _bn(out, name=f"{name}_dw", weight_decay=wd)
    out = _conv(out, channels, name=f"{name}_pw2", weight_decay=wd)
    branch_preact = _bn(out, name=f"{name}_pw2", weight_decay=wd)
    out = base.relu(branch_preact, name=f"{name}_pw2_relu")
    preact = keras.layers.Concatenate(name=f"{name}_preact_concat")(
        [x1, branch_preact]
    )
    out = keras.layers.Concatenate(name=f"{name}_concat")([x1, out])
    return base.ChannelShuffle(2, name=f"{name}_shuffle")(out), preact


def shufflenet_v2(
    net_size=1,
    *,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name="ShuffleV2",
):
    """Builds RepDistiller's `ShuffleNetV2(net_size, num_classes)`.

    Args:
        net_size: a key of `CONFIGS` (RepDistiller's `ShuffleV2` uses 1).
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
    if net_size not in CONFIGS:
        raise ValueError(
            f"`net_size` must be one of {sorted(CONFIGS)}. "
            f"Received: net_size={net_size!r}"
        )
    widths, num_blocks = CONFIGS[net_size]
    wd = weight_decay

    # Layers.
    inputs = base.image_input(input_shape)
    x = _conv(inputs, 24, name="stem_conv", weight_decay=wd)
    x = _bn(x, name="stem", weight_decay=wd, activation=True)
    outputs = {"stem": x}
    preacts = {}
    for stage, (planes, blocks) in enumerate(zip(widths, num_blocks), 1):
        x = _down_block(x, planes, name=f"stage{stage}_down", weight_decay=wd)
        for block in range(blocks):
            x, preact = _basic_block(x, name=f"stage{stage}_block{block}",
                                     weight_decay=wd)
        outputs[f"stage{stage}"] = x
        preacts[f"stage{stage}_preact"] = preact
    outputs.update(preacts)
    x = _conv(x, widths[3], name="head_conv", weight_decay=wd)
    x = _bn(x, name="head", weight_decay=wd, activation=True)

    # Head (pool -> classifier) and functional model.
    return base.classification_model(inputs, x, outputs, num_classes,
                                     weight_decay=wd, name=name)


@MODELS.register("ShuffleV2")
def shuffle_v2(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
               name="ShuffleV2"):
    """RepDistiller's `ShuffleV2` (net size 1: widths 116/232/464, last conv
    1024, blocks 3/7/3); see `shufflenet_v2`."""
    return shufflenet_v2(
        1, num_classes=num_classes, input_shape=input_shape,
        weight_decay=weight_decay, name=name,
    )
