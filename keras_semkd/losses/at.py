"""Attention transfer (Zagoruyko & Komodakis, 2017)."""

from keras import ops

from keras_semkd.losses.base import STAGE_KEYS
from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import check_feature_maps
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import flatten_features
from keras_semkd.utils.numerics import l2_normalize
from keras_semkd.utils.numerics import match_spatial_size


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
