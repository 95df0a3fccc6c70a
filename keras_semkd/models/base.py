"""Shared pieces of the CIFAR model zoo: registry, validation, layer helpers.

Every family module (`resnet.py`, `wrn.py`, ...) builds its networks from the
helpers here so that all models agree on:

* **Padding.** PyTorch's `Conv2d(k, stride, padding=k // 2)` pads
  symmetrically. Keras' `padding="same"` does too when the stride is 1, but
  with stride 2 on an even-sized map it pads only at the bottom/right.
  Strided convolutions and poolings that pad are therefore built as an
  explicit `ZeroPadding2D` followed by a `"valid"` op, so every output sees
  exactly the pixels it sees in RepDistiller (this matters for porting
  PyTorch weights; the extra pad costs ~1-2% of a resnet8x4 train step).
* **BatchNorm.** `momentum=0.9, epsilon=1e-5`, i.e. PyTorch's
  `BatchNorm2d(momentum=0.1, eps=1e-5)`; gamma starts at 1 and beta at 0.
  The layer is `models.batch_norm.BatchNormalization`: Keras' layer running
  TF's fused kernel on the TensorFlow backend (same weights and numbers,
  1.14x faster steps on CPU).
* **Initialisation.** Each family states which RepDistiller init it copies;
  `utils.numerics` and the initializer below reproduce PyTorch's formulas,
  including the depthwise case where Keras' fan computation differs from
  PyTorch's.
* **Weight decay.** See `utils.numerics.weight_decay_regularizer`: `L2(weight_decay / 2)` on *every*
  trainable weight (kernels, biases, BN gamma and beta), which gives the same
  gradient as PyTorch SGD's `weight_decay` argument.
"""

import math
import numbers

import keras
from keras import ops

from keras_semkd.models.batch_norm import BatchNormalization
from keras_semkd.registry import Registry
from keras_semkd.utils.numerics import BN_EPSILON
from keras_semkd.utils.numerics import BN_MOMENTUM
from keras_semkd.utils.numerics import check_weight_decay
from keras_semkd.utils.numerics import torch_default_bias
from keras_semkd.utils.numerics import torch_default_kernel
from keras_semkd.utils.numerics import weight_decay_regularizer

MODELS = Registry("model")
"""Registry of model builders: `name -> builder(num_classes, input_shape,
weight_decay=0.0, name=None) -> keras.Model`."""



# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_num_classes(num_classes):
    """Raises `ValueError` unless `num_classes` is a positive integer."""
    if not _is_int(num_classes) or num_classes < 1:
        raise ValueError(
            "`num_classes` must be a positive integer. "
            f"Received: num_classes={num_classes!r}"
        )
    return int(num_classes)


def validate_input_shape(input_shape, min_size, model_name):
    """Checks a channels-last `(height, width, channels)` image shape.

    Args:
        input_shape: the shape to check (tuple or list of three ints).
        min_size: the smallest height/width the network accepts (its total
            downsampling factor, so the last stage is at least 1x1).
        model_name: used in the error message.

    Returns:
        The shape as a tuple of Python ints.
    """
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(_is_int(d) and d >= 1 for d in input_shape)
    ):
        raise ValueError(
            f"`input_shape` of {model_name} must be a channels-last "
            "(height, width, channels) tuple of positive integers, e.g. "
            "(32, 32, 3); any number of channels >= 1 is accepted. "
            f"Received: input_shape={input_shape!r}"
        )
    height, width, _ = input_shape
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model_name} downsamples its input {min_size}x, so height and "
            f"width must each be at least {min_size}. "
            f"Received: input_shape={tuple(input_shape)!r}"
        )
    return tuple(int(d) for d in input_shape)


def check_args(num_classes, input_shape, weight_decay, min_size, model_name):
    """Validates the common builder arguments; returns them normalised."""
    return (
        validate_num_classes(num_classes),
        validate_input_shape(input_shape, min_size, model_name),
        check_weight_decay(weight_decay),
    )


# ---------------------------------------------------------------------------
# Initializer (the PyTorch defaults live in `utils.numerics`)
# ---------------------------------------------------------------------------


def he_normal_fan_out():
    """`nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`, and
    also RepDistiller's `normal_(0, sqrt(2 / (k * k * out_channels)))` for a
    dense (non-grouped) convolution."""
    return keras.initializers.VarianceScaling(
        2.0, "fan_out", "untruncated_normal"
    )


# ---------------------------------------------------------------------------
# Layer helpers (functional: tensor in, tensor out)
# ---------------------------------------------------------------------------


def _pad_for(kernel_size, strides, x, name):
    """Returns `(x, keras_padding)` reproducing PyTorch's `padding=k // 2`."""
    pad = kernel_size // 2
    if pad == 0:
        return x, "valid"
    if strides == 1:
        return x, "same"
    return keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x), "valid"


def conv2d(
    x,
    filters,
    kernel_size,
    *,
    name,
    weight_decay,
    strides=1,
    groups=1,
    use_bias=False,
    kernel_initializer=None,
    bias_initializer="zeros",
):
    """`nn.Conv2d(in, filters, kernel_size, strides, padding=k // 2,
    groups=groups, bias=use_bias)`; He-normal fan_out init by default.

    A grouped 1x1 conv without bias is a `GroupedPointwiseConv2D` (same
    kernel layout as `Conv2D(groups=...)`, several times faster on the
    TensorFlow CPU backend, which runs grouped `Conv2D` through per-op XLA).
    """
    reg = weight_decay_regularizer(weight_decay)
    if groups > 1 and kernel_size == 1 and strides == 1 and not use_bias:
        return GroupedPointwiseConv2D(
            filters,
            groups,
            kernel_initializer=kernel_initializer or he_normal_fan_out(),
            kernel_regularizer=reg,
            name=name,
        )(x)
    x, padding = _pad_for(kernel_size, strides, x, name)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer or he_normal_fan_out(),
        bias_initializer=bias_initializer,
        kernel_regularizer=reg,
        bias_regularizer=reg if use_bias else None,
        name=name,
    )(x)


def depthwise_conv2d(
    x, *, name, weight_decay, strides=1, kernel_size=3, init="he_fan_out"
):
    """`nn.Conv2d(C, C, k, strides, padding=k // 2, groups=C, bias=False)`.

    Keras computes the fans of a depthwise kernel `(k, k, C, 1)` differently
    from PyTorch (weight `(C, 1, k, k)`: fan_in = k*k, fan_out = C*k*k), so
    the PyTorch distribution is spelled out explicitly:

    * `init="he_fan_out"`: N(0, sqrt(2 / (k * k * C))) (RepDistiller's
      MobileNetV2 init, = kaiming_normal fan_out);
    * `init="torch_default"`: U(-1/k, 1/k) (PyTorch's default, fan_in = k*k).
    """
    channels = x.shape[-1]
    if init == "he_fan_out":
        initializer = keras.initializers.RandomNormal(
            stddev=math.sqrt(2.0 / (kernel_size * kernel_size * channels))
        )
    elif init == "torch_default":
        initializer = torch_default_bias(kernel_size * kernel_size)
    else:
        raise ValueError(
            "`init` must be 'he_fan_out' or 'torch_default'. "
            f"Received: init={init!r}"
        )
    x, padding = _pad_for(kernel_size, strides, x, name)
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=initializer,
        depthwise_regularizer=weight_decay_regularizer(weight_decay),
        name=name,
    )(x)


def batch_norm(x, *, name, weight_decay):
    """`nn.BatchNorm2d` with PyTorch's defaults (momentum 0.1, eps 1e-5),
    on TF's fused kernel where possible (`models.batch_norm`)."""
    reg = weight_decay_regularizer(weight_decay)
    return BatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_regularizer=reg,
        beta_regularizer=reg,
        name=name,
    )(x)


def relu(x, *, name):
    return keras.layers.ReLU(name=name)(x)


def conv_bn(
    x,
    filters,
    kernel_size,
    *,
    name,
    weight_decay,
    strides=1,
    groups=1,
    activation=True,
    kernel_initializer=None,
):
    """Conv (no bias) -> BN [-> ReLU]; layers named `{name}_conv`,
    `{name}_bn`, `{name}_relu`."""
    x = conv2d(
        x,
        filters,
        kernel_size,
        strides=strides,
        groups=groups,
        kernel_initializer=kernel_initializer,
        weight_decay=weight_decay,
        name=f"{name}_conv",
    )
    x = batch_norm(x, weight_decay=weight_decay, name=f"{name}_bn")
    if activation:
        x = relu(x, name=f"{name}_relu")
    return x


def avg_pool_3x3_s2(x, *, name):
    """`nn.AvgPool2d(3, stride=2, padding=1)` (count_include_pad=True: the
    zero padding counts in the average, as in PyTorch)."""
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.AveragePooling2D(3, strides=2, name=name)(x)


def classifier(
    x,
    num_classes,
    *,
    weight_decay,
    kernel_initializer,
    bias_initializer,
    name="classifier",
):
    """The final `nn.Linear(embedding_dim, num_classes)`."""
    reg = weight_decay_regularizer(weight_decay)
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        kernel_regularizer=reg,
        bias_regularizer=reg,
        name=name,
    )(x)


def torch_default_classifier(x, num_classes, *, weight_decay):
    """`nn.Linear` left at PyTorch's default init (weight and bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
    return classifier(
        x,
        num_classes,
        weight_decay=weight_decay,
        kernel_initializer=torch_default_kernel(),
        bias_initializer=torch_default_bias(x.shape[-1]),
    )


def global_pool(x):
    """Global average pooling + flatten: the `"embedding"` output."""
    return keras.layers.GlobalAveragePooling2D(name="global_pool")(x)


# ---------------------------------------------------------------------------
# Layers used by the ShuffleNets
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_semkd")
class ChannelShuffle(keras.layers.Layer):
    """ShuffleNet channel shuffle for channels-last feature maps.

    Equivalent to PyTorch's NCHW
    `x.view(N, g, C // g, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)`:
    output channel `j * groups + i` is input channel `i * (C // groups) + j`.
    Implemented as one reshape, one transpose and one reshape.

    Args:
        groups: number of channel groups; must divide the channel count.
        **kwargs: base `Layer` arguments (e.g. `name`).
    """

    def __init__(self, groups, **kwargs):
        super().__init__(**kwargs)
        if not _is_int(groups) or groups < 1:
            raise ValueError(
                "`groups` must be a positive integer. "
                f"Received: groups={groups!r}"
            )
        self.groups = int(groups)

    def build(self, input_shape):
        channels = input_shape[-1]
        if len(input_shape) != 4 or channels is None:
            raise ValueError(
                "ChannelShuffle expects a 4D channels-last input with a known "
                f"channel count. Received: input_shape={input_shape}"
            )
        if channels % self.groups:
            raise ValueError(
                f"The channel count must be divisible by groups={self.groups}."
                f" Received: input_shape={input_shape}"
            )

    def call(self, inputs):
        shape = ops.shape(inputs)
        height, width, channels = shape[1], shape[2], inputs.shape[-1]
        g = self.groups
        x = ops.reshape(inputs, (-1, height, width, g, channels // g))
        x = ops.transpose(x, (0, 1, 2, 4, 3))
        return ops.reshape(x, (-1, height, width, channels))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups})
        return config


@keras.saving.register_keras_serializable(package="keras_semkd")
class GroupedPointwiseConv2D(keras.layers.Layer):
    """Grouped 1x1 convolution without bias, as a batched matmul.

    Computes exactly `keras.layers.Conv2D(filters, 1, groups=groups,
    use_bias=False)` (PyTorch `nn.Conv2d(in, filters, 1, groups=groups,
    bias=False)`) with the same kernel shape `(1, 1, in // groups, filters)`,
    so weights are interchangeable: output channel `o` of group
    `o // (filters // groups)` reads input channels of the same group. It is
    one reshape, one `einsum` and one reshape, which avoids the per-call XLA
    compilation that the TensorFlow backend uses for grouped `Conv2D` on CPU
    (about 4x faster for ShuffleV1 training there, and no slower on JAX).

    Args:
        filters: number of output channels, divisible by `groups`.
        groups: number of groups; must divide the input channel count.
        kernel_initializer: initializer of the kernel.
        kernel_regularizer: optional regularizer of the kernel.
        **kwargs: base `Layer` arguments (e.g. `name`).
    """

    def __init__(
        self,
        filters,
        groups,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for arg, value in (("filters", filters), ("groups", groups)):
            if not _is_int(value) or value < 1:
                raise ValueError(
                    f"`{arg}` must be a positive integer. "
                    f"Received: {arg}={value!r}"
                )
        if filters % groups:
            raise ValueError(
                f"`filters` must be divisible by `groups`. "
                f"Received: filters={filters}, groups={groups}"
            )
        self.filters = int(filters)
        self.groups = int(groups)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if len(input_shape) != 4 or channels is None:
            raise ValueError(
                "GroupedPointwiseConv2D expects a 4D channels-last input with "
                f"a known channel count. Received: input_shape={input_shape}"
            )
        if channels % self.groups:
            raise ValueError(
                f"The channel count must be divisible by groups={self.groups}."
                f" Received: input_shape={input_shape}"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(1, 1, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )

    def call(self, inputs):
        shape = ops.shape(inputs)
        height, width = shape[1], shape[2]
        g = self.groups
        c_in = inputs.shape[-1] // g
        x = ops.reshape(inputs, (-1, height, width, g, c_in))
        kernel = ops.reshape(self.kernel, (c_in, g, self.filters // g))
        y = ops.einsum("nhwgc,cgd->nhwgd", x, kernel)
        return ops.reshape(y, (-1, height, width, self.filters))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "groups": self.groups,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_semkd")
class ChannelSplit(keras.layers.Layer):
    """Splits channels-last maps into `[x[..., :c], x[..., c:]]`,
    `c = int(channels * ratio)` (RepDistiller's ShuffleNetV2 `SplitBlock`).

    Args:
        ratio: fraction of channels in the first part, in (0, 1).
        **kwargs: base `Layer` arguments (e.g. `name`).
    """

    def __init__(self, ratio=0.5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(ratio, numbers.Real) or not 0.0 < ratio < 1.0:
            raise ValueError(
                f"`ratio` must be a float in (0, 1). Received: ratio={ratio!r}"
            )
        self.ratio = float(ratio)

    def _split_index(self, channels):
        return int(channels * self.ratio)

    def call(self, inputs):
        c = self._split_index(inputs.shape[-1])
        return [inputs[..., :c], inputs[..., c:]]

    def compute_output_shape(self, input_shape):
        c = self._split_index(input_shape[-1])
        head = tuple(input_shape[:-1])
        return [head + (c,), head + (input_shape[-1] - c,)]

    def get_config(self):
        config = super().get_config()
        config.update({"ratio": self.ratio})
        return config


# ---------------------------------------------------------------------------
# Functional model
# ---------------------------------------------------------------------------


def image_input(input_shape):
    return keras.Input(shape=input_shape, name="images")


def functional_model(inputs, outputs, name):
    """`keras.Model(inputs, outputs=dict)`; `outputs` in RepDistiller's
    `feats` order: stem, stages (and their `_preact`), embedding, logits."""
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def classification_model(
    inputs,
    x,
    features,
    num_classes,
    *,
    weight_decay,
    name,
    kernel_initializer=None,
    bias_initializer="zeros",
):
    """The tail every zoo family shares: global pool -> classifier -> the
    output dict -> the functional model.

    Args:
        inputs: the model's `keras.Input`.
        x: the last feature map.
        features: the feature outputs so far (`"stem"`, `"stage1"`, ...,
            their `_preact`s) in RepDistiller's `feats` order;
            `"embedding"` (the pooled `x`) and `"logits"` are appended.
        num_classes: width of the classifier.
        weight_decay: coupled weight decay of the classifier.
        name: model name.
        kernel_initializer: the classifier's kernel initializer; `None`
            leaves `nn.Linear` at PyTorch's default init (kernel and bias
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)), `bias_initializer` ignored).
        bias_initializer: the classifier's bias initializer.
    """
    embedding = global_pool(x)
    if kernel_initializer is None:
        logits = torch_default_classifier(embedding, num_classes,
                                          weight_decay=weight_decay)
    else:
        logits = classifier(
            embedding, num_classes, weight_decay=weight_decay,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
        )
    outputs = dict(features)
    outputs["embedding"] = embedding
    outputs["logits"] = logits
    return functional_model(inputs, outputs, name)
