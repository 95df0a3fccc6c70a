"""Batch normalization for the zoo: Keras' layer, with TF's fused kernel.

Keras 3's `BatchNormalization` computes the batch moments and the
normalization as separate ops on every backend. On the TensorFlow backend
this is a chain of small element-wise kernels per layer; TF's fused kernel
(`FusedBatchNormV3`, the one `tf.keras` 2 used and PyTorch's CPU batch norm
resembles) does the same work in one pass forward and one backward. In the
zoo's small CIFAR networks that is a large share of a step: on 2 CPU cores
a resnet8x4 training step goes 1.14x faster in CPU time (BENCHMARKS.md).

`BatchNormalization` here is a drop-in subclass: the same weights (gamma,
beta, moving mean and variance, in the same order, so weight files of either
class load into the other), the same config, the same moving-statistics
update (Keras' *biased* batch variance, momentum as in Keras) and the same
numbers up to float round-off. It takes the fused path only where that is
exactly equivalent — TensorFlow backend, 4-D channels-last float32/16
input, no mask, no renorm, not synchronized — and defers to Keras everywhere else (JAX,
masks, other ranks). Like Keras it computes in float32 under mixed
precision and casts the output to the layer's compute dtype.

Saved models load in plain Keras. The layer serializes as Keras' own
`keras.layers.BatchNormalization` (same config, `fused` left out: it is an
execution choice, not part of the model), so a `.keras` file of a zoo model
or of a student trained here loads with `keras.saving.load_model` without
importing `keras_semkd`, and gives the same outputs (it then runs Keras'
unfused implementation). Files written before this change, which name
`keras_semkd>BatchNormalization`, still load when `keras_semkd.models` is
imported.
"""

import keras
from keras.src import api_export


@keras.saving.register_keras_serializable(package="keras_semkd")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` using TF's fused kernel when it can.

    Args:
        fused: `True` (default) takes the fused kernel on the TensorFlow
            backend when the input allows it (see the module docstring);
            `False` always runs Keras' implementation. Not part of the
            config: the layer saves as Keras' own (module docstring).
        **kwargs: `keras.layers.BatchNormalization` arguments.
    """

    def __init__(self, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def _can_fuse(self, inputs, mask):
        return (
            self.fused
            and keras.backend.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and not self.renorm
            and not getattr(self, "synchronized", False)
            and keras.backend.standardize_dtype(inputs.dtype)
            in ("float32", "bfloat16", "float16")
        )

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = (tf.cast(self.gamma, "float32") if self.scale
                 else tf.ones([channels], "float32"))
        beta = (tf.cast(self.beta, "float32") if self.center
                else tf.zeros([channels], "float32"))
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC",
                is_training=True,
            )
            # The fused kernel returns the Bessel-corrected variance; Keras
            # (and so this layer) tracks the biased one.
            n = tf.cast(tf.size(x) // channels, "float32")
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            m = self.momentum
            self.moving_mean.assign(
                tf.cast(self.moving_mean, "float32") * m + mean * (1.0 - m))
            self.moving_variance.assign(
                tf.cast(self.moving_variance, "float32") * m
                + variance * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta,
                mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"),
                epsilon=self.epsilon, data_format="NHWC", is_training=False,
            )
        return tf.cast(y, self.compute_dtype)


def _serialize_as_keras_batch_norm(cls):
    """Makes Keras serialize `cls` under the public name
    `keras.layers.BatchNormalization` (module `keras.layers`, no registered
    name), which every Keras installation resolves to its own class.

    Keras looks the public name of a class up in
    `keras.src.api_export.REGISTERED_OBJS_TO_NAMES` (object -> name) before
    falling back to the registered custom name; only that direction is
    added, so deserializing `keras.layers.BatchNormalization` still gives
    Keras' class. `tests/models/test_batch_norm.py` checks the saved config
    and a load in a process that never imports keras_semkd, so a Keras
    version that changes this lookup fails there, not in a user's hands.
    """
    names = getattr(api_export, "REGISTERED_OBJS_TO_NAMES", None)
    if names is not None:
        names[cls] = "keras.layers.BatchNormalization"
    return cls


_serialize_as_keras_batch_norm(BatchNormalization)
