"""CIFAR VGGs with batch norm (vgg8, vgg11, vgg13, vgg16, vgg19).

Port of RepDistiller's `models/vgg.py` `vgg*_bn` models (registered there as
`vgg8` ... `vgg19`): five blocks of 3x3 conv (with bias) - BN - ReLU,
2x2 max pooling between blocks 0-1, 1-2 and 2-3 (between blocks 3-4 only
for 64x64 inputs, as RepDistiller's `if h == 64`), global average pooling
and one linear classifier (no FC stack). RepDistiller drops the last ReLU
of every block and applies it in `forward`, which is what makes the
`_preact` outputs available.

Output keys (NHWC; shapes for a 32x32 input; RepDistiller's name in []):

    "stem"             (32, 32, 64)    [f0] block0, post-ReLU
    "stage1"           (16, 16, 128)   [f1] block1, post-ReLU
    "stage2"           (8, 8, 256)     [f2] block2, post-ReLU
    "stage3"           (4, 4, 512)     [f3] block3, post-ReLU
    "stage4"           (4, 4, 512)     [f4] block4, post-ReLU
    "stage{i}_preact"  as "stage{i}"   [f{i}, preact=True] the block's last
                                       BN output, before ReLU
    "embedding"        (512,)          [f5] global average pool of stage4
    "logits"           (num_classes,)

Minimum input size: 8x8 (three 2x2 max-pools, floor semantics as PyTorch).

Init (as RepDistiller): convs N(0, sqrt(2 / (k*k*out))) (= kaiming-normal
fan_out) with zero bias, BN gamma 1 / beta 0, classifier N(0, 0.01) with
zero bias.
"""

import keras

from keras_semkd.models import base
from keras_semkd.models.base import MODELS

MIN_INPUT_SIZE = 8

CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": (
        (64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
        (512, 512, 512),
    ),
    "vgg19": (
        (64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}


def _vgg_block(x, widths, *, name, weight_decay):
    """Conv-BN-ReLU repeated, without the last ReLU (returns the BN output)."""
    for i, width in enumerate(widths):
        if i:
            x = base.relu(x, name=f"{name}_relu{i - 1}")
        x = base.conv2d(x, width, 3, use_bias=True, name=f"{name}_conv{i}",
                        weight_decay=weight_decay)
        x = base.batch_norm(x, name=f"{name}_bn{i}",
                            weight_decay=weight_decay)
    return x


def _max_pool(x, name):
    return keras.layers.MaxPooling2D(2, strides=2, name=name)(x)


def vgg(
    config,
    *,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name="vgg",
):
    """Builds RepDistiller's `VGG(cfg, batch_norm=True, num_classes)`.

    Args:
        config: five tuples of conv widths, one per block.
        num_classes: size of `"logits"`.
        input_shape: channels-last `(H, W, C)`, H and W at least 8. The
            fourth max-pool is used only when `H == 64` (as RepDistiller).
        weight_decay: PyTorch-SGD-equivalent weight decay: every trainable
            weight (conv kernels and biases, BN gamma/beta, classifier kernel
            and bias) gets `keras.regularizers.L2(weight_decay / 2)`, whose
            gradient is `weight_decay * w`. `0.0` adds no regularizer.
        name: model name.

    Returns:
        A functional `keras.Model` with the dict outputs of the module
        docstring.
    """
    num_classes, input_shape, weight_decay = base.check_args(
        num_classes, input_shape, weight_decay, MIN_INPUT_SIZE, name
    )
    if len(config) != 5:
        raise ValueError(
            "`config` must hold five blocks of conv widths. "
            f"Received: config={config!r}"
        )
    wd = weight_decay

    # Layers.
    inputs = base.image_input(input_shape)
    x = _vgg_block(inputs, config[0], name="block0", weight_decay=wd)
    x = base.relu(x, name="block0_out")
    outputs = {"stem": x}
    preacts = {}
    for stage in range(1, 5):
        if stage < 4 or input_shape[0] == 64:
            x = _max_pool(x, name=f"pool{stage - 1}")
        preact = _vgg_block(x, config[stage], name=f"block{stage}",
                            weight_decay=wd)
        x = base.relu(preact, name=f"block{stage}_out")
        outputs[f"stage{stage}"] = x
        preacts[f"stage{stage}_preact"] = preact
    outputs.update(preacts)

    # Head (pool -> classifier) and functional model.
    return base.classification_model(
        inputs, x, outputs, num_classes, weight_decay=wd, name=name,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )


def _register(model_name):
    config = CONFIGS[model_name]

    def builder(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
                name=model_name):
        return vgg(
            config, num_classes=num_classes, input_shape=input_shape,
            weight_decay=weight_decay, name=name,
        )

    builder.__name__ = model_name
    builder.__qualname__ = model_name
    builder.__doc__ = (
        f"RepDistiller's `{model_name}` (= `{model_name}_bn`): "
        f"`vgg(CONFIGS[{model_name!r}])`; see `vgg` for the arguments."
    )
    MODELS.register(model_name, builder)
    return builder


vgg8 = _register("vgg8")
vgg11 = _register("vgg11")
vgg13 = _register("vgg13")
vgg16 = _register("vgg16")
vgg19 = _register("vgg19")
