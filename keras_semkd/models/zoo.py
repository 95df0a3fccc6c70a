"""The model zoo: name lookup, building, and feature-key helpers.

Importing this module imports every family module, which registers its
builders in `MODELS` (names as RepDistiller spells them; lookup ignores
case): resnet8 resnet14 resnet20 resnet32 resnet44 resnet56 resnet110
resnet8x4 resnet32x4 wrn_16_1 wrn_16_2 wrn_40_1 wrn_40_2 vgg8 vgg11 vgg13
vgg16 vgg19 MobileNetV2 ShuffleV1 ShuffleV2 ResNet50.

Every model is a functional `keras.Model` named after its registry entry,
whose output is a dict (see each family module for shapes):

* `"stem"`: RepDistiller's `f0`;
* `"stage1"`, `"stage2"`, ...: the stage feature maps `f1, f2, ...` (NHWC);
* `"stage{i}_preact"`: RepDistiller's `preact=True` variant of `f{i}`, only
  where it differs from `f{i}`;
* `"embedding"`: the pooled feature fed to the classifier;
* `"logits"`.
"""

import re

from keras_semkd.models import mobilenetv2  # noqa: F401  (registers)
from keras_semkd.models import resnet  # noqa: F401
from keras_semkd.models import resnet_imagenet  # noqa: F401
from keras_semkd.models import shufflenetv1  # noqa: F401
from keras_semkd.models import shufflenetv2  # noqa: F401
from keras_semkd.models import vgg  # noqa: F401
from keras_semkd.models import wrn  # noqa: F401
from keras_semkd.models.base import MODELS

_STAGE_KEY = re.compile(r"^stage(\d+)$")


def get(name, num_classes=100, input_shape=(32, 32, 3), **kwargs):
    """Builds the registered model `name` (case-insensitive).

    Args:
        name: a registered name, e.g. `"resnet32x4"`; an unknown name raises
            `KeyError` listing the known ones.
        num_classes: size of the `"logits"` output (positive int).
        input_shape: channels-last `(H, W, C)`; each family documents its
            minimum H and W.
        **kwargs: forwarded to the builder: `weight_decay` (float, default
            0.0; PyTorch-SGD-equivalent coupled L2 on every weight) and
            `name` (model name, default: the registry name).

    Returns:
        A functional `keras.Model` with dict outputs.
    """
    return MODELS.get(name)(
        num_classes=num_classes, input_shape=input_shape, **kwargs
    )


def names():
    """The registered model names, sorted case-insensitively."""
    return MODELS.names()


def _output_keys(model):
    outputs = getattr(model, "output", None)
    if not isinstance(outputs, dict):
        raise ValueError(
            "`feature_keys` expects a functional model with dict outputs from "
            f"`keras_semkd.models.get`. Received: model={model!r} with "
            f"output={type(outputs).__name__}"
        )
    return set(outputs)


def feature_keys(model, preact=False, include_stem=False):
    """The ordered stage feature keys of a zoo model.

    `feature_keys(m)` is `["stage1", ..., "stageN"]`, shallow to deep (the
    order of RepDistiller's `feats[1:-1]`).

    Args:
        model: a model built by `get` (or loaded from a `.keras` file).
        preact: if `True`, use `"stage{i}_preact"` wherever the model has it
            and `"stage{i}"` otherwise, like RepDistiller's `preact=True`.
        include_stem: if `True`, prepend `"stem"` (RepDistiller's `f0`), so
            `feature_keys(m, preact, True) + ["embedding"]` is exactly the
            key list of RepDistiller's `feats`.

    Returns:
        A list of output keys.
    """
    keys = _output_keys(model)
    stages = sorted(
        (int(m.group(1)), k)
        for k in keys
        if (m := _STAGE_KEY.match(k))
    )
    ordered = []
    if include_stem and "stem" in keys:
        ordered.append("stem")
    for _, key in stages:
        if preact and f"{key}_preact" in keys:
            key = f"{key}_preact"
        ordered.append(key)
    return ordered
