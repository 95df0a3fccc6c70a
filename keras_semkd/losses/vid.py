"""Variational information distillation (Ahn et al., 2019)."""

import math

import keras
import numpy as np
from keras import layers
from keras import ops

from keras_semkd.losses.base import STAGE_KEYS
from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import build_pair_regressors
from keras_semkd.losses.base import check_feature_maps
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import check_weight_decay
from keras_semkd.utils.numerics import match_spatial_size
from keras_semkd.utils.numerics import torch_default_kernel
from keras_semkd.utils.numerics import weight_decay_regularizer


def vid_loss(teacher_feature, predicted_mean, predicted_variance):
    """Per-example Gaussian negative log-likelihood of the teacher map.

    `mean_{h,w,c} ½ ((μ - t)² / σ²_c + log σ²_c)` (the constant
    `½ log 2π` is dropped, as in RepDistiller's `VIDLoss`, whose
    `torch.mean` over batch and elements is the batch mean of these values).

    Args:
        teacher_feature: `(B, H, W, C_t)` teacher map.
        predicted_mean: `(B, H, W, C_t)` regressed student map `μ`.
        predicted_variance: `(C_t,)` per-channel variance `σ²`, `> 0`.

    Returns:
        `(B,)` float32 tensor.
    """
    t = ops.cast(teacher_feature, "float32")
    mu = ops.cast(predicted_mean, "float32")
    var = ops.cast(predicted_variance, "float32")
    nll = 0.5 * (ops.square(mu - t) / var + ops.log(var))
    return ops.mean(nll, axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package="keras_semkd")
class VIDRegressor(keras.layers.Layer):
    """RepDistiller's VID regressor and variance for one feature pair.

    Mean: `conv1x1(C_s→C_mid) → ReLU → conv1x1(C_mid→C_mid) → ReLU →
    conv1x1(C_mid→C_t)`, no biases, PyTorch's default init. Variance:
    `σ²_c = softplus(α_c) + eps`, with `α` initialised to
    `log(exp(init_pred_var - eps) - 1)` so that `σ² = init_pred_var`.

    Args:
        student_channels, mid_channels, teacher_channels: `C_s, C_mid, C_t`.
        init_pred_var: initial variance.
        eps: variance floor.
        weight_decay: L2 coefficient (PyTorch SGD convention) on the
            kernels and on `α`.
    """

    def __init__(self, student_channels, mid_channels, teacher_channels,
                 init_pred_var=5.0, eps=1e-5, weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.student_channels = int(student_channels)
        self.mid_channels = int(mid_channels)
        self.teacher_channels = int(teacher_channels)
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.weight_decay = check_weight_decay(weight_decay)
        reg = weight_decay_regularizer(self.weight_decay)
        self.convs = [
            layers.Conv2D(
                filters, 1, use_bias=False,
                kernel_initializer=torch_default_kernel(),
                kernel_regularizer=reg, dtype=self.dtype_policy,
                name=f"conv{i}",
            )
            for i, filters in enumerate(
                (self.mid_channels, self.mid_channels,
                 self.teacher_channels), start=1,
            )
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        alpha = float(np.log(np.exp(self.init_pred_var - self.eps) - 1.0))
        self.log_scale = self.add_weight(
            shape=(self.teacher_channels,),
            initializer=keras.initializers.Constant(alpha),
            regularizer=weight_decay_regularizer(self.weight_decay),
            name="log_scale",
        )

    def variance(self):
        """`softplus(α) + eps`, shape `(C_t,)`."""
        return ops.softplus(ops.cast(self.log_scale, "float32")) + self.eps

    def call(self, x):
        x = self.convs[0](x)
        x = self.convs[1](ops.relu(x))
        return self.convs[2](ops.relu(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.teacher_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student_channels": self.student_channels,
                "mid_channels": self.mid_channels,
                "teacher_channels": self.teacher_channels,
                "init_pred_var": self.init_pred_var,
                "eps": self.eps,
                "weight_decay": self.weight_decay,
            }
        )
        return config


@register_loss("vid")
class VIDLoss(DistillationLoss):
    """Variational information distillation with learned regressors.

    For each pair (the larger map adaptive-average-pooled to the smaller
    `H × W`), a 3-layer 1×1-conv regressor `μ(F_s)` predicts the teacher
    map under a Gaussian with learned per-channel variance
    `σ²_c = softplus(α_c) + ε`:

    `L_VID = 1/B Σ_b Σ_pairs 1/(HWC_t) Σ_{h,w,c}
    ½ [(μ(F_s,b) - F_t,b)²_{hwc} / σ²_c + log σ²_c]`

    Per example (`reduction = "per_example"`). The regressors and `α` are
    weights of this loss (created by `build_from_specs`, trained with the
    student).

    Reference: Ahn et al., "Variational Information Distillation for
    Knowledge Transfer", CVPR 2019. RepDistiller (`distiller_zoo/VID.py`,
    authors' code): `VIDLoss(C_s, C_t, C_t)` (middle width = teacher
    channels), `init_pred_var = 5.0`, `eps = 1e-5`, on `feat[1:-1]` (every
    stage output after ReLU, `stage1..stageK`), pair losses summed, weight
    `-b 1` (with `-a 0`, `-r 1`).

    Args:
        init_pred_var: initial variance `σ²` of every channel.
        eps: variance floor `ε`.
        mid_channels: width of the regressor's hidden layers; `None` uses
            each pair's teacher channels (RepDistiller).
        weight_decay: L2 coefficient (PyTorch SGD convention) on the
            regressors and `α`; RepDistiller decays them with the student's
            `5e-4`.
        teacher_keys / student_keys: paired stage maps (default
            `stage1..stage3`, three-stage CIFAR ResNets/WRNs).
    """

    run_values = ("weight_decay",)

    def __init__(self, init_pred_var=5.0, eps=1e-5, mid_channels=None,
                 weight_decay=0.0, teacher_keys=STAGE_KEYS,
                 student_keys=None, **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if not (math.isfinite(init_pred_var) and init_pred_var > eps > 0):
            raise ValueError(
                "VID needs init_pred_var > eps > 0. Received: "
                f"init_pred_var={init_pred_var}, eps={eps}"
            )
        if mid_channels is not None and not (
            isinstance(mid_channels, int) and mid_channels >= 1
        ):
            raise ValueError(
                "mid_channels must be None or a positive integer. "
                f"Received: mid_channels={mid_channels!r}"
            )
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.mid_channels = mid_channels
        self.weight_decay = check_weight_decay(weight_decay)
        self.regressors = []

    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        check_feature_maps(self, teacher_shapes, student_shapes)

    def build_from_specs(self, teacher_shapes, student_shapes):
        build_pair_regressors(self, teacher_shapes, student_shapes,
                              self._regressor)

    def _regressor(self, i, t_shape, s_shape):
        t_c, s_c = t_shape[-1], s_shape[-1]
        reg = VIDRegressor(
            s_c, self.mid_channels or t_c, t_c,
            init_pred_var=self.init_pred_var, eps=self.eps,
            weight_decay=self.weight_decay, dtype=self.dtype_policy,
            name=f"regressor_{i}",
        )
        reg.build((None, None, None, s_c))
        return reg

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        if len(self.regressors) != len(self.teacher_keys):
            raise ValueError(
                f"Loss {self.name!r} has no regressors yet: call "
                "build_from_specs(teacher_shapes, student_shapes) first (the "
                "Distiller does)."
            )
        total = 0.0
        for f_t, f_s, reg in zip(teacher, student, self.regressors):
            f_s, f_t = match_spatial_size(
                ops.cast(f_s, "float32"), ops.cast(f_t, "float32")
            )
            total = total + vid_loss(f_t, reg(f_s), reg.variance())
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "init_pred_var": self.init_pred_var,
                "eps": self.eps,
                "mid_channels": self.mid_channels,
                "weight_decay": self.weight_decay,
            }
        )
        return config
