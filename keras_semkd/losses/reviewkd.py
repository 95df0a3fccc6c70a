"""Knowledge review, ReviewKD (Chen et al., CVPR 2021), mdistiller's CIFAR
version: attention-based fusion (ABF) on the student side and the
hierarchical context loss (HCL)."""

import numbers

import keras
import numpy as np
from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import EpochWarmup
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import BN_EPSILON
from keras_semkd.utils.numerics import BN_MOMENTUM
from keras_semkd.utils.numerics import adaptive_average_pool
from keras_semkd.utils.numerics import check_weight_decay
from keras_semkd.utils.numerics import torch_default_bias
from keras_semkd.utils.numerics import torch_default_kernel
from keras_semkd.utils.numerics import weight_decay_regularizer

# ---------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------


def nearest_resize(x, out_hw):
    """PyTorch's `F.interpolate(x, size, mode="nearest")` for channels-last
    maps: output pixel `i` reads input `floor(i · in / out)`."""
    _, h, w, _ = x.shape
    out_h, out_w = out_hw
    if (h, w) == (out_h, out_w):
        return x
    rows = np.minimum(np.floor(np.arange(out_h) * (h / out_h)), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (w / out_w)), w - 1)
    x = ops.take(x, ops.convert_to_tensor(rows.astype("int32")), axis=1)
    return ops.take(x, ops.convert_to_tensor(cols.astype("int32")), axis=2)


def hcl_loss(student_features, teacher_features, levels=(4, 2, 1)):
    """Per-example hierarchical context loss of ReviewKD.

    For each pair of `(batch, h, w, c)` maps (fused student, teacher):

    `ℓ = [MSE(F_s, F_t) + Σ_j 2^{-j} MSE(pool_{l_j}(F_s), pool_{l_j}(F_t))]
         / (1 + Σ_j 2^{-j})`

    over the levels `l_j` of `levels` smaller than `h` (in order, `j = 1,
    2, ...` counting only the kept levels), `pool_l` the adaptive average
    pooling to `l × l` and MSE the mean over the map of one example; the
    pairs are summed. The batch mean of this value is mdistiller's
    `hcl_loss` (its MSEs are means over the batch too).

    Args:
        student_features: list of `(batch, h, w, c)` tensors.
        teacher_features: list of tensors of the same shapes.
        levels: the pyramid sizes.

    Returns:
        `(batch,)` float32 tensor.
    """
    total = 0.0
    for fs, ft in zip(student_features, teacher_features):
        fs = ops.cast(fs, "float32")
        ft = ops.cast(ft, "float32")
        h = fs.shape[1]
        loss = ops.mean(ops.square(fs - ft), axis=(1, 2, 3))
        cnt = 1.0
        tot = 1.0
        for level in levels:
            if level >= h:
                continue
            cnt /= 2.0
            ps = adaptive_average_pool(fs, level)
            pt = adaptive_average_pool(ft, level)
            loss = loss + cnt * ops.mean(ops.square(ps - pt), axis=(1, 2, 3))
            tot += cnt
        total = total + loss / tot
    return total


def _as_map(x):
    """A `(batch, c)` pooled feature as a `(batch, 1, 1, c)` map."""
    x = ops.cast(x, "float32")
    if len(x.shape) == 2:
        return ops.reshape(x, (-1, 1, 1, x.shape[-1]))
    return x


def _map_shape(shape, side, key):
    shape = tuple(shape)
    if len(shape) == 2:
        shape = (shape[0], 1, 1, shape[1])
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(
            f"ReviewKD reads (batch, h, w, c) maps or (batch, c) pooled "
            f"features with static sizes; the {side} output {key!r} has "
            f"shape {shape}."
        )
    return shape[1:]


# ---------------------------------------------------------------------------
# Attention-based fusion
# ---------------------------------------------------------------------------


class ABF(keras.layers.Layer):
    """ReviewKD's attention-based fusion block (mdistiller `ABF`).

    `x = BN(conv1x1(x))`; if `fuse`: `y = nearest(y, x's size)`,
    `(a, b) = σ(conv1x1([x, y]))`, `x = a · x + b · y`; `x` is resized
    (nearest) to `out_hw`; returns `(BN(conv3x3(x)), x)`, the output
    compared with the teacher and the residual passed to the next
    (shallower) block.

    Args:
        mid_channels: channels of the residual path.
        out_channels: channels of the output (the teacher's).
        out_hw: `(h, w)` of the output (the teacher's).
        fuse: whether the block fuses a residual from a deeper block.
        weight_decay: PyTorch-style weight decay of all its weights.
    """

    def __init__(self, mid_channels, out_channels, out_hw, fuse,
                 weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mid_channels = int(mid_channels)
        self.out_channels = int(out_channels)
        self.out_hw = tuple(int(d) for d in out_hw)
        self.fuse = bool(fuse)
        self.weight_decay = float(weight_decay)
        reg = weight_decay_regularizer(self.weight_decay)
        # PyTorch `kaiming_uniform_(w, a=1)`: U(±√(3 / fan_in)).
        kaiming_a1 = keras.initializers.VarianceScaling(
            1.0, mode="fan_in", distribution="uniform")
        self.conv1 = keras.layers.Conv2D(
            self.mid_channels, 1, use_bias=False,
            kernel_initializer=kaiming_a1, kernel_regularizer=reg,
            dtype=self.dtype_policy, name="conv1")
        self.bn1 = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            beta_regularizer=reg, gamma_regularizer=reg,
            dtype=self.dtype_policy, name="bn1")
        self.conv2 = keras.layers.Conv2D(
            self.out_channels, 3, padding="same", use_bias=False,
            kernel_initializer=kaiming_a1, kernel_regularizer=reg,
            dtype=self.dtype_policy, name="conv2")
        self.bn2 = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            beta_regularizer=reg, gamma_regularizer=reg,
            dtype=self.dtype_policy, name="bn2")
        if self.fuse:
            # PyTorch's default Conv2d init: U(±1/√fan_in) for both.
            self.att_conv = keras.layers.Conv2D(
                2, 1, activation="sigmoid",
                kernel_initializer=torch_default_kernel(),
                bias_initializer=torch_default_bias(2 * self.mid_channels),
                kernel_regularizer=reg, bias_regularizer=reg,
                dtype=self.dtype_policy, name="att_conv")
        else:
            self.att_conv = None

    def build(self, input_shape):
        h, w, c = input_shape[1:]
        self.conv1.build((None, h, w, c))
        self.bn1.build((None, h, w, self.mid_channels))
        if self.fuse:
            self.att_conv.build((None, h, w, 2 * self.mid_channels))
        oh, ow = self.out_hw
        self.conv2.build((None, oh, ow, self.mid_channels))
        self.bn2.build((None, oh, ow, self.out_channels))

    def call(self, x, residual=None, training=False):
        x = self.bn1(self.conv1(x), training=training)
        if self.fuse:
            if residual is None:
                raise ValueError(
                    "This ABF block fuses a residual from a deeper block. "
                    "Received: residual=None"
                )
            residual = nearest_resize(residual, x.shape[1:3])
            z = self.att_conv(ops.concatenate([x, residual], axis=-1))
            x = x * z[..., 0:1] + residual * z[..., 1:2]
        x = nearest_resize(x, self.out_hw)
        y = self.bn2(self.conv2(x), training=training)
        return y, x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mid_channels": self.mid_channels,
                "out_channels": self.out_channels,
                "out_hw": list(self.out_hw),
                "fuse": self.fuse,
                "weight_decay": self.weight_decay,
            }
        )
        return config


# ---------------------------------------------------------------------------
# Loss layer
# ---------------------------------------------------------------------------


@register_loss("reviewkd")
class ReviewKDLoss(EpochWarmup, DistillationLoss):
    """Knowledge review: student features fused deep to shallow, matched to
    the teacher's by the hierarchical context loss.

    With student features `S_1..S_n` (shallow to deep; the last one the
    pooled embedding as a 1×1 map) and teacher features `T_1..T_n`:

    `(F_n, R_n) = ABF_n(S_n)`, `(F_i, R_i) = ABF_i(S_i, R_{i+1})`,
    `L = w(e) · Σ_i HCL(F_i, T_i)`

    where `ABF_i` maps `S_i` to `mid_channel` channels (1×1 conv + BN),
    fuses the upsampled residual of the deeper block with a learned
    per-pixel attention (`σ(conv1x1)` of both), resizes to the teacher's
    `h × w` and maps to the teacher's channels (3×3 conv + BN); `HCL`
    compares full maps and adaptive-average-pooled pyramids (levels 4, 2, 1
    below the map size, weights 1/2, 1/4, 1/8, normalized; see `hcl_loss`);
    `w(e) = min(e / warmup_epochs, 1)` over epochs `e = 1, 2, ...` (the
    `Distiller`'s 0-based epoch plus one, as mdistiller counts).
    One value per example.

    Reference: Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge
    Review", CVPR 2021; code: mdistiller `distillers/ReviewKD.py` (the
    CIFAR version: student post-ReLU stage outputs and pooled feature,
    teacher pre-activation stage outputs and pooled feature). Defaults are
    mdistiller's (`cfg.REVIEWKD`): term weight 1.0 (its ResNet-32×4 →
    ResNet-8×4 config uses 5.0) with cross-entropy weight 1.0, warm-up 20
    epochs, `mid_channel = min(512, channels of the last student
    feature)`. The ABF blocks are learned parts of this loss (trained with
    the student, never exported); their sizes come from the output shapes
    in `build_from_specs`.

    Args:
        warmup_epochs: length of the linear warm-up in epochs, >= 0.
        max_mid_channel: cap of `mid_channel`.
        levels: HCL pyramid sizes.
        weight_decay: PyTorch-SGD-style weight decay of the ABF weights
            (`L2(weight_decay / 2)` on every one, BN included, like the
            model zoo; mdistiller decays them with the student's 5e-4).
            Default 0: no regularizer.
        teacher_keys: teacher features, shallow to deep (default
            `stage1_preact`..`stage3_preact`, `embedding`: the 3-stage
            CIFAR ResNets/WRNs).
        student_keys: student features paired with them (default
            `stage1`..`stage3`, `embedding`).
    """

    run_values = ("weight_decay",)

    def __init__(self, warmup_epochs=20, max_mid_channel=512,
                 levels=(4, 2, 1), weight_decay=0.0,
                 teacher_keys=("stage1_preact", "stage2_preact",
                               "stage3_preact", "embedding"),
                 student_keys=("stage1", "stage2", "stage3", "embedding"),
                 **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        self.init_warmup(warmup_epochs)
        if not (isinstance(max_mid_channel, numbers.Integral)
                and max_mid_channel >= 1):
            raise ValueError(
                "max_mid_channel must be an integer >= 1. "
                f"Received: max_mid_channel={max_mid_channel!r}"
            )
        levels = tuple(int(level) for level in levels)
        if any(level < 1 for level in levels):
            raise ValueError(
                f"levels must be positive sizes. Received: levels={levels}"
            )
        self.max_mid_channel = int(max_mid_channel)
        self.levels = levels
        self.weight_decay = check_weight_decay(weight_decay)

    # -- building ----------------------------------------------------------
    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        for t_key, s_key in zip(self.teacher_keys, self.student_keys):
            _map_shape(teacher_shapes[t_key], "teacher", t_key)
            _map_shape(student_shapes[s_key], "student", s_key)

    def build_from_specs(self, teacher_shapes, student_shapes):
        self.student_map_shapes = [
            _map_shape(student_shapes[k], "student", k)
            for k in self.student_keys
        ]
        self.teacher_map_shapes = [
            _map_shape(teacher_shapes[k], "teacher", k)
            for k in self.teacher_keys
        ]
        self.mid_channel = min(self.max_mid_channel,
                               self.student_map_shapes[-1][-1])
        n = len(self.student_keys)
        # Block i reads student feature i; the deepest (last) one fuses
        # nothing. Variables are named under this loss ("reviewkd/abf1/...").
        self.abfs = []
        with keras.name_scope(self.name):
            for i, (s_shape, t_shape) in enumerate(
                    zip(self.student_map_shapes, self.teacher_map_shapes)):
                abf = ABF(self.mid_channel, t_shape[-1], t_shape[:2],
                          fuse=i < n - 1, weight_decay=self.weight_decay,
                          dtype="float32", name=f"abf{i + 1}")
                abf.build((None,) + tuple(s_shape))
                self.abfs.append(abf)
        self.built = True

    # -- computation -------------------------------------------------------
    def fuse(self, student, training=False):
        """Runs the ABF blocks deep to shallow; returns the fused student
        maps in key order (each of its teacher's shape)."""
        features = [_as_map(s) for s in student]
        results = [None] * len(features)
        residual = None
        for i in reversed(range(len(features))):
            results[i], residual = self.abfs[i](
                features[i], residual, training=training)
        return results

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        fused = self.fuse(student, training=training)
        targets = [_as_map(t) for t in teacher]
        return self.warmup_factor() * hcl_loss(fused, targets, self.levels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "warmup_epochs": self.warmup_epochs,
                "max_mid_channel": self.max_mid_channel,
                "levels": list(self.levels),
                "weight_decay": self.weight_decay,
            }
        )
        return config
