"""Attention transfer (Zagoruyko & Komodakis, 2017).

Also home of the small feature helpers that RepDistiller's AT, VID and NST
share: PyTorch-exact adaptive average pooling (used to bring two maps to the
same spatial size) and `F.normalize`-style L2 normalization.
"""

import math

import numpy as np
from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss

STAGE_KEYS = ("stage1", "stage2", "stage3")


# ---------------------------------------------------------------------------
# Shared helpers (channels-last, keras.ops only)
# ---------------------------------------------------------------------------


def _pool_matrix(in_size, out_size):
    """`(out_size, in_size)` averaging matrix of PyTorch's adaptive pooling:
    output cell `i` averages inputs `floor(i·n/m) .. ceil((i+1)·n/m) - 1`."""
    mat = np.zeros((out_size, in_size), dtype="float32")
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def adaptive_avg_pool2d(x, output_size):
    """PyTorch's `F.adaptive_avg_pool2d` for a channels-last `(B, H, W, C)`
    map with static `H, W`; `output_size` is `(h, w)` with `h <= H`,
    `w <= W` (any ratio, divisible or not)."""
    height, width = int(x.shape[1]), int(x.shape[2])
    out_h, out_w = (int(v) for v in output_size)
    if not (1 <= out_h <= height and 1 <= out_w <= width):
        raise ValueError(
            "adaptive_avg_pool2d only shrinks a map. Received: input size "
            f"{(height, width)}, output_size={(out_h, out_w)}"
        )
    x = ops.cast(x, "float32")
    if out_h != height:
        x = ops.einsum("ih,bhwc->biwc", _pool_matrix(height, out_h), x)
    if out_w != width:
        x = ops.einsum("jw,biwc->bijc", _pool_matrix(width, out_w), x)
    return x


def match_spatial_size(f_s, f_t):
    """Pools the larger of two `(B, H, W, C)` maps down to the smaller's
    `H × W` by adaptive average pooling (RepDistiller's rule for AT, VID and
    NST, applied per axis so non-square maps work too)."""
    size = (
        min(int(f_s.shape[1]), int(f_t.shape[1])),
        min(int(f_s.shape[2]), int(f_t.shape[2])),
    )
    if tuple(f_s.shape[1:3]) != size:
        f_s = adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[1:3]) != size:
        f_t = adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


def l2_normalize(x, axis=-1, eps=1e-12):
    """PyTorch's `F.normalize(x, dim=axis, eps=eps)`: `x / max(‖x‖₂, eps)`.

    Written as `x / sqrt(max(Σx², eps²))`, which has the same value and a
    finite (zero) gradient at `x = 0`, where `sqrt` alone would give NaN.
    """
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / ops.sqrt(ops.maximum(sq, eps * eps))


def flatten_features(x):
    """`(B, ...) -> (B, prod(...))` (`x.view(B, -1)`), in float32."""
    x = ops.cast(x, "float32")
    dim = math.prod(int(d) for d in x.shape[1:])
    return ops.reshape(x, (-1, dim))


def check_feature_maps(loss, teacher_shapes, student_shapes):
    """Raises `ValueError` unless every key of `loss` is a 4-D
    `(batch, H, W, C)` feature map."""
    for side, keys, shapes in (
        ("teacher", loss.teacher_keys, teacher_shapes),
        ("student", loss.student_keys, student_shapes),
    ):
        for key in keys:
            shape = tuple(shapes[key])
            if len(shape) != 4 or any(d is None for d in shape[1:]):
                raise ValueError(
                    f"{type(loss).__name__} reads (batch, H, W, C) feature "
                    f"maps with static H, W, C. Received: {side} output "
                    f"{key!r} of shape {shape}"
                )


# ---------------------------------------------------------------------------
# Attention transfer
# ---------------------------------------------------------------------------


def attention_map(feature, p=2.0):
    """`normalize(mean_c(f^p))`, flattened over `H·W`: shape `(B, H·W)`."""
    f = ops.cast(feature, "float32")
    amap = ops.mean(ops.power(f, p), axis=-1)
    return l2_normalize(flatten_features(amap), axis=-1)


def at_loss(teacher_features, student_features, p=2.0):
    """Per-example attention-transfer loss summed over feature pairs.

    For each pair the larger map is first adaptive-average-pooled to the
    smaller one's size; then `mean_hw (a_s - a_t)²` with
    `a = normalize(mean_c(f^p))`. This is RepDistiller's `Attention`, whose
    `(·).pow(2).mean()` over batch and positions is the batch mean of the
    returned values.

    Args:
        teacher_features: list of `(B, H, W, C_t)` teacher maps.
        student_features: list of `(B, H', W', C_s)` student maps, paired
            with `teacher_features`.
        p: exponent of the attention map.

    Returns:
        `(B,)` float32 tensor.
    """
    total = 0.0
    for f_t, f_s in zip(teacher_features, student_features):
        f_s, f_t = match_spatial_size(f_s, f_t)
        diff = attention_map(f_s, p) - attention_map(f_t, p)
        total = total + ops.mean(ops.square(diff), axis=-1)
    return total


@register_loss("at")
class ATLoss(DistillationLoss):
    """Attention transfer on pairs of stage feature maps.

    For each pair `(F_t, F_s)` (the larger map adaptive-average-pooled to
    the smaller `H × W`), with `a(F) = vec(Σ_c F_c^p / C) / ‖·‖₂`:

    `L_AT = 1/B Σ_b Σ_pairs 1/(HW) ‖a(F_s,b) - a(F_t,b)‖²`

    Per example (`reduction = "per_example"`). Parameter-free; channel counts
    may differ.

    Reference: Zagoruyko & Komodakis, "Paying More Attention to Attention:
    Improving the Performance of Convolutional Neural Networks via Attention
    Transfer", ICLR 2017. RepDistiller (`distiller_zoo/AT.py`): `p = 2`,
    weight `-b 1000` (with `-a 0`, `-r 1`), applied to `feat[1:-1]`, i.e.
    every stage output after ReLU (`stage1..stageK`); the pair losses are
    summed.

    Args:
        p: exponent of the attention map (RepDistiller computes `f.pow(p)`,
            not `|f|^p`; identical for the default `p = 2`).
        teacher_keys / student_keys: paired stage maps; the default suits
            three-stage CIFAR ResNets/WRNs, recipes set `stage1..stageK`
            per model pair.
    """

    def __init__(self, p=2.0, teacher_keys=STAGE_KEYS, student_keys=None,
                 **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if not p > 0:
            raise ValueError(f"p must be > 0. Received: p={p}")
        self.p = float(p)

    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        check_feature_maps(self, teacher_shapes, student_shapes)

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        return at_loss(teacher, student, self.p)

    def get_config(self):
        config = super().get_config()
        config["p"] = self.p
        return config
