"""FitNet hints (Romero et al., 2015) through RepDistiller's `ConvReg`."""

import keras
from keras import layers
from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import build_pair_regressors
from keras_semkd.losses.base import check_feature_maps
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import BN_EPSILON
from keras_semkd.utils.numerics import BN_MOMENTUM
from keras_semkd.utils.numerics import check_weight_decay
from keras_semkd.utils.numerics import torch_default_bias
from keras_semkd.utils.numerics import torch_default_kernel
from keras_semkd.utils.numerics import weight_decay_regularizer


def hint_loss(teacher_feature, student_regressed):
    """Per-example FitNet hint loss `mean_{h,w,c} (r(F_s) - F_t)²`.

    RepDistiller's `HintLoss` is `nn.MSELoss()` (mean over batch and all
    elements), i.e. the batch mean of these values.

    Args:
        teacher_feature: `(B, H, W, C_t)` teacher map.
        student_regressed: the student map after the regressor, same shape.

    Returns:
        `(B,)` float32 tensor.
    """
    t = ops.cast(teacher_feature, "float32")
    s = ops.cast(student_regressed, "float32")
    return ops.mean(ops.square(s - t), axis=(1, 2, 3))


@keras.saving.register_keras_serializable(package="keras_semkd")
class ConvReg(keras.layers.Layer):
    """RepDistiller's `ConvReg`: maps a student map onto a teacher map.

    With student map `(H_s, W_s, C_s)` and teacher map `(H_t, W_t, C_t)`:

    - `H_s == 2·H_t`: `Conv2d(C_s, C_t, 3, stride=2, padding=1)`,
    - `2·H_s == H_t`: `ConvTranspose2d(C_s, C_t, 4, stride=2, padding=1)`,
    - `H_s >= H_t`: `Conv2d(C_s, C_t, kernel=(1+H_s-H_t, 1+W_s-W_t))`,
    - otherwise: not supported (`ValueError`, as RepDistiller raises),

    then `BatchNorm2d(C_t)` and, if `use_relu`, ReLU. Padding and cropping
    are explicit (`ZeroPadding2D` + valid conv, valid transposed conv +
    `Cropping2D`) so the receptive fields are PyTorch's exactly; weights use
    PyTorch's default init and BN uses PyTorch's momentum and epsilon.

    Args:
        student_shape: `(H_s, W_s, C_s)`.
        teacher_shape: `(H_t, W_t, C_t)`.
        use_relu: apply ReLU after BN (FitNet: `True`).
        weight_decay: L2 coefficient (PyTorch SGD convention) for every
            weight of the regressor; `0` disables it.
    """

    def __init__(self, student_shape, teacher_shape, use_relu=True,
                 weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.student_shape = tuple(int(d) for d in student_shape)
        self.teacher_shape = tuple(int(d) for d in teacher_shape)
        self.use_relu = bool(use_relu)
        self.weight_decay = check_weight_decay(weight_decay)
        s_h, s_w, s_c = self.student_shape
        t_h, t_w, t_c = self.teacher_shape
        reg = weight_decay_regularizer(self.weight_decay)
        common = dict(
            kernel_initializer=torch_default_kernel(),
            kernel_regularizer=reg,
            bias_regularizer=reg,
            dtype=self.dtype_policy,
        )
        self.pad = None
        self.crop = None
        if s_h == 2 * t_h:
            self.pad = layers.ZeroPadding2D(1, dtype=self.dtype_policy,
                                            name="pad")
            self.conv = layers.Conv2D(
                t_c, 3, strides=2, padding="valid",
                bias_initializer=torch_default_bias(s_c * 9),
                name="conv", **common,
            )
        elif 2 * s_h == t_h:
            self.conv = layers.Conv2DTranspose(
                t_c, 4, strides=2, padding="valid",
                bias_initializer=torch_default_bias(t_c * 16),
                name="conv", **common,
            )
            self.crop = layers.Cropping2D(1, dtype=self.dtype_policy,
                                          name="crop")
        elif s_h >= t_h and s_w >= t_w:
            kernel = (1 + s_h - t_h, 1 + s_w - t_w)
            self.conv = layers.Conv2D(
                t_c, kernel, padding="valid",
                bias_initializer=torch_default_bias(
                    s_c * kernel[0] * kernel[1]
                ),
                name="conv", **common,
            )
        else:
            raise ValueError(
                "ConvReg maps a student map onto a teacher map of half, "
                "twice or at most the same spatial size (as RepDistiller's "
                f"ConvReg). Received: student size {(s_h, s_w)}, teacher "
                f"size {(t_h, t_w)}"
            )
        self.bn = layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            gamma_regularizer=reg, beta_regularizer=reg,
            dtype=self.dtype_policy, name="bn",
        )
        out = self.compute_output_shape((None,) + self.student_shape)
        if tuple(out[1:]) != self.teacher_shape:
            raise ValueError(
                "ConvReg cannot map the student map onto the teacher map "
                f"(it would give {tuple(out[1:])}). Received: "
                f"student_shape={self.student_shape}, "
                f"teacher_shape={self.teacher_shape}"
            )

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        shape = self.conv.compute_output_shape(shape)
        if self.crop is not None:
            shape = self.crop.compute_output_shape(shape)
        return shape

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.pad is not None:
            self.pad.build(shape)
            shape = self.pad.compute_output_shape(shape)
        self.conv.build(shape)
        shape = self.conv.compute_output_shape(shape)
        if self.crop is not None:
            self.crop.build(shape)
            shape = self.crop.compute_output_shape(shape)
        self.bn.build(shape)

    def call(self, x, training=False):
        if self.pad is not None:
            x = self.pad(x)
        x = self.conv(x)
        if self.crop is not None:
            x = self.crop(x)
        x = self.bn(x, training=training)
        if self.use_relu:
            x = ops.relu(x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student_shape": list(self.student_shape),
                "teacher_shape": list(self.teacher_shape),
                "use_relu": self.use_relu,
                "weight_decay": self.weight_decay,
            }
        )
        return config


@register_loss("fitnet")
class FitNetLoss(DistillationLoss):
    """FitNet hint loss through a learned student → teacher regressor.

    `L_hint = 1/B Σ_b Σ_pairs 1/(H_t W_t C_t) ‖r(F_s,b) - F_t,b‖²`,

    with `r` = `ConvReg` (conv / strided conv / transposed conv chosen from
    the two spatial sizes, then BN and ReLU), one regressor per key pair,
    created by `build_from_specs` and trained with the student (the
    regressors are weights of this loss, never of the student). Per example
    (`reduction = "per_example"`). The regressor's BN uses batch statistics
    in training steps and its moving statistics otherwise.

    Reference: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    RepDistiller (`distiller_zoo/FitNet.py`, `models/util.py`): single-stage
    training (no separate hint pre-training), `nn.MSELoss`, weight `-b 100`
    (with `-a 0`, `-r 1`), hint layer `--hint_layer 2`, i.e. `feat[2]` =
    the second stage output after ReLU (`"stage2"`, the default here).

    Args:
        use_relu: ReLU at the end of the regressor (RepDistiller: `True`).
        weight_decay: L2 coefficient (PyTorch SGD convention) on the
            regressor's weights; RepDistiller's SGD decays them with the
            student's `5e-4`, so recipes pass the student's weight decay.
        teacher_keys / student_keys: the hint/guided layers (default
            `"stage2"`), paired one to one; the pair losses are summed.
    """

    run_values = ("weight_decay",)

    def __init__(self, use_relu=True, weight_decay=0.0,
                 teacher_keys="stage2", student_keys=None, **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        self.use_relu = bool(use_relu)
        self.weight_decay = check_weight_decay(weight_decay)
        self.regressors = []

    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        check_feature_maps(self, teacher_shapes, student_shapes)

    def build_from_specs(self, teacher_shapes, student_shapes):
        build_pair_regressors(self, teacher_shapes, student_shapes,
                              self._regressor)

    def _regressor(self, i, t_shape, s_shape):
        reg = ConvReg(
            s_shape, t_shape, use_relu=self.use_relu,
            weight_decay=self.weight_decay, dtype=self.dtype_policy,
            name=f"regressor_{i}",
        )
        reg.build((None,) + s_shape)
        return reg

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        if len(self.regressors) != len(self.teacher_keys):
            raise ValueError(
                f"Loss {self.name!r} has no regressor yet: call "
                "build_from_specs(teacher_shapes, student_shapes) first (the "
                "Distiller does)."
            )
        total = 0.0
        for f_t, f_s, reg in zip(teacher, student, self.regressors):
            s = reg(ops.cast(f_s, "float32"), training=training)
            total = total + hint_loss(f_t, s)
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            {"use_relu": self.use_relu, "weight_decay": self.weight_decay}
        )
        return config
