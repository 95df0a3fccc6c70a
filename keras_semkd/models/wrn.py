"""Wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Port of RepDistiller's `models/wrn.py` (Zagoruyko & Komodakis, "Wide Residual
Networks"): a 3x3 stem conv (no BN), three stages of `n = (depth - 4) / 6`
pre-activation BasicBlocks (BN-ReLU-conv-BN-ReLU-conv, stride 1, 2, 2,
widths `16k, 32k, 64k`), a final BN-ReLU, global average pooling and a linear
classifier. Dropout is 0 as in RepDistiller's models, so it is left out.

Because the blocks are pre-activation, RepDistiller's stage features are
the raw residual sums (no BN, no ReLU), and its `preact=True` features are
those sums passed through the *next* BN (the first BN of the next stage, or
the final BN) -- the "BN before ReLU" of the Overhaul (OFD) distiller. The
`_preact` outputs below are exactly those BN outputs; they are the same
tensors the network uses, so they cost nothing extra.

Output keys (NHWC; shapes for a 32x32 input and widen factor `k`;
RepDistiller's name in []):

    "stem"           (32, 32, 16)    [f0] stem conv output (no BN, no ReLU)
    "stage1"         (32, 32, 16k)   [f1] residual sum
    "stage2"         (16, 16, 32k)   [f2] residual sum
    "stage3"         (8, 8, 64k)     [f3] residual sum
    "stage1_preact"  (32, 32, 16k)   [f1, preact=True] stage2_block0_bn1(f1)
    "stage2_preact"  (16, 16, 32k)   [f2, preact=True] stage3_block0_bn1(f2)
    "stage3_preact"  (8, 8, 64k)     [f3, preact=True] final_bn(f3)
    "embedding"      (64k,)          [f4] global pool of ReLU(final_bn(f3))
    "logits"         (num_classes,)

Minimum input size: 4x4 (two stride-2 convs). RepDistiller's
`avg_pool2d(out, 8)` is a global average pool at 32x32; here it is global
for every input size.

Init (as RepDistiller): convs N(0, sqrt(2 / (k*k*out))) (= kaiming-normal
fan_out), BN gamma 1 / beta 0, classifier weight at PyTorch's default
`nn.Linear` init and bias 0.
"""

import keras

from keras_semkd.models import base
from keras_semkd.models.base import MODELS

MIN_INPUT_SIZE = 4


def _wrn_block(x, out_planes, strides, *, name, weight_decay):
    """RepDistiller wrn `BasicBlock`; returns `(output, bn1_output)`."""
    wd = weight_decay
    equal_in_out = x.shape[-1] == out_planes
    normed = base.batch_norm(x, name=f"{name}_bn1", weight_decay=wd)
    act = base.relu(normed, name=f"{name}_relu1")
    out = base.conv2d(act, out_planes, 3, strides=strides,
                      name=f"{name}_conv1", weight_decay=wd)
    out = base.batch_norm(out, name=f"{name}_bn2", weight_decay=wd)
    out = base.relu(out, name=f"{name}_relu2")
    out = base.conv2d(out, out_planes, 3, name=f"{name}_conv2",
                      weight_decay=wd)
    if equal_in_out:
        shortcut = x
    else:
        shortcut = base.conv2d(act, out_planes, 1, strides=strides,
                               name=f"{name}_shortcut", weight_decay=wd)
    out = keras.layers.Add(name=f"{name}_add")([shortcut, out])
    return out, normed


def wide_resnet(
    depth,
    widen_factor,
    *,
    num_classes=100,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name="wrn",
):
    """Builds RepDistiller's `WideResNet(depth, num_classes, widen_factor)`.

    Args:
        depth: `6 * n + 4`.
        widen_factor: width multiplier `k`.
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
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"`depth` must be 6n+4 with n >= 1. Received: depth={depth}"
        )
    blocks = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    wd = weight_decay

    # Layers.
    inputs = base.image_input(input_shape)
    x = base.conv2d(inputs, 16, 3, name="stem_conv", weight_decay=wd)
    outputs = {"stem": x}
    preacts = {}
    for stage, planes in enumerate(widths, start=1):
        for block in range(blocks):
            strides = 2 if (stage > 1 and block == 0) else 1
            x, normed = _wrn_block(
                x, planes, strides, name=f"stage{stage}_block{block}",
                weight_decay=wd,
            )
            if stage > 1 and block == 0:
                preacts[f"stage{stage - 1}_preact"] = normed
        outputs[f"stage{stage}"] = x
    normed = base.batch_norm(x, name="final_bn", weight_decay=wd)
    preacts[f"stage{len(widths)}_preact"] = normed
    outputs.update(preacts)
    x = base.relu(normed, name="final_relu")

    # Head (pool -> classifier) and functional model.
    return base.classification_model(
        inputs, x, outputs, num_classes, weight_decay=wd, name=name,
        kernel_initializer=base.torch_default_kernel(),
    )


def _register(model_name, depth, widen_factor):
    def builder(num_classes=100, input_shape=(32, 32, 3), weight_decay=0.0,
                name=model_name):
        return wide_resnet(
            depth, widen_factor, num_classes=num_classes,
            input_shape=input_shape, weight_decay=weight_decay, name=name,
        )

    builder.__name__ = model_name
    builder.__qualname__ = model_name
    builder.__doc__ = (
        f"WRN-{depth}-{widen_factor}: `wide_resnet({depth}, {widen_factor})`;"
        " see `wide_resnet` for the arguments."
    )
    MODELS.register(model_name, builder)
    return builder


wrn_16_1 = _register("wrn_16_1", 16, 1)
wrn_16_2 = _register("wrn_16_2", 16, 2)
wrn_40_1 = _register("wrn_40_1", 40, 1)
wrn_40_2 = _register("wrn_40_2", 40, 2)
