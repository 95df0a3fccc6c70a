"""The semantic branch head of SAKD: a classifier on uniformized vectors.

SAKD's abstract describes "a standalone feature-based classification
branch" that extracts semantic-aware knowledge to guide the student. In this
project (design in `docs/method.md`) the branch is a small MLP classifier
that reads uniformized feature vectors (or pooled stage features). It lives
inside the SAKD loss layer, so it is trained with the student but never
exported with it.
"""

import numbers

import keras
from keras import ops

_EPSILON = 1e-6  # added to the variance when standardizing


@keras.saving.register_keras_serializable(package="keras_semkd")
class SemanticHead(keras.layers.Layer):
    """Feature-based classifier: standardize → [Dense → act]* → Dense.

    `h(u) = W_K φ(… φ(W_1 z + b_1) …) + b_K`, with `z = (u − mean(u)) /
    sqrt(var(u) + ε)` taken over the features of each example when
    `standardize=True` (no learned affine: uniformized vectors such as
    attention rows have a tiny, configuration-dependent scale, and this
    makes the head see the same scale for every grid and mode).

    Args:
        num_classes: number of output logits.
        hidden_units: widths of the hidden layers; `()` gives a linear
            classifier. Default `(256,)`.
        activation: hidden activation (a `keras.activations` name).
        standardize: per-example standardization of the input.
        kernel_initializer: initializer of the kernels (biases start at 0).
        **kwargs: base `Layer` arguments. The dtype policy defaults to
            `"float32"`.

    Call arguments:
        inputs: `(B, D)` tensor.
        detach_weights: if `True`, the weights enter the computation through
            `stop_gradient`: the logits stay differentiable with respect to
            `inputs`, but no gradient reaches the head. SAKD uses this on
            the student path so that student-side guidance cannot pull the
            shared head toward the student.

    Output: `(B, num_classes)` float32 logits.
    """

    def __init__(self, num_classes, hidden_units=(256,), activation="relu",
                 standardize=True, kernel_initializer="glorot_uniform",
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if (not isinstance(num_classes, numbers.Integral)
                or isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(
                "num_classes must be a positive integer. "
                f"Received: num_classes={num_classes!r}"
            )
        if isinstance(hidden_units, numbers.Integral):
            hidden_units = (hidden_units,)
        try:
            hidden_units = tuple(int(u) for u in hidden_units)
        except (TypeError, ValueError):
            hidden_units = None
        if hidden_units is None or any(u < 1 for u in hidden_units):
            raise ValueError(
                "hidden_units must be a sequence of positive integers. "
                f"Received: hidden_units={hidden_units!r}"
            )
        self.num_classes = int(num_classes)
        self.hidden_units = hidden_units
        self.activation = keras.activations.get(activation)
        self.standardize = bool(standardize)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "SemanticHead expects inputs of shape (batch, features) with "
                f"a known feature size. Received: input_shape={input_shape}"
            )
        self.kernels = []
        self.biases = []
        fan_in = input_shape[-1]
        widths = self.hidden_units + (self.num_classes,)
        for i, units in enumerate(widths):
            self.kernels.append(
                self.add_weight(
                    shape=(fan_in, units),
                    initializer=self.kernel_initializer,
                    name=f"kernel_{i}",
                )
            )
            self.biases.append(
                self.add_weight(
                    shape=(units,), initializer="zeros", name=f"bias_{i}"
                )
            )
            fan_in = units
        self.built = True

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def call(self, inputs, detach_weights=False):
        h = ops.cast(inputs, "float32")
        if self.standardize:
            mean = ops.mean(h, axis=-1, keepdims=True)
            var = ops.mean(ops.square(h - mean), axis=-1, keepdims=True)
            h = (h - mean) * ops.rsqrt(var + _EPSILON)
        last = len(self.kernels) - 1
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            kernel = ops.convert_to_tensor(kernel)
            bias = ops.convert_to_tensor(bias)
            if detach_weights:
                kernel = ops.stop_gradient(kernel)
                bias = ops.stop_gradient(bias)
            h = ops.matmul(h, kernel) + bias
            if i < last:
                h = self.activation(h)
        return h

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "hidden_units": list(self.hidden_units),
                "activation": keras.activations.serialize(self.activation),
                "standardize": self.standardize,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
