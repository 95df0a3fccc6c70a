"""Neuron selectivity transfer (Huang & Wang, 2017)."""

from keras import ops

from keras_semkd.losses.base import STAGE_KEYS
from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import check_feature_maps
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import l2_normalize
from keras_semkd.utils.numerics import match_spatial_size


def _channel_rows(feature):
    """`(B, H, W, C) -> (B, C, H·W)`, each channel L2-normalized over
    positions (PyTorch `F.normalize(f.view(B, C, -1), dim=2)`)."""
    f = ops.cast(feature, "float32")
    hw = int(f.shape[1]) * int(f.shape[2])
    f = ops.reshape(f, (-1, hw, int(f.shape[3])))
    return l2_normalize(ops.transpose(f, (0, 2, 1)), axis=2)


def _mean_poly_kernel(a, b):
    """Per-example mean of `(⟨a_i, b_j⟩)²` over all channel pairs."""
    gram = ops.matmul(a, ops.transpose(b, (0, 2, 1)))
    return ops.mean(ops.square(gram), axis=(1, 2))


def nst_loss(teacher_features, student_features):
    """Per-example NST loss (squared MMD, polynomial kernel) summed over
    feature pairs.

    For each pair (the larger map adaptive-average-pooled to the smaller
    `H × W`), with `f_i` / `g_j` the position-normalized channels of the
    teacher / student: `mean_ij k(f_i, f_j) + mean_ij k(g_i, g_j)
    - 2 mean_ij k(g_i, f_j)`, `k(x, y) = (xᵀy)²`. RepDistiller's
    `NSTLoss` (`full_loss=True`) takes these means over the batch too, so it
    is the batch mean of the returned values.

    Args:
        teacher_features: list of `(B, H, W, C_t)` teacher maps.
        student_features: list of `(B, H', W', C_s)` student maps, paired
            with `teacher_features`.

    Returns:
        `(B,)` float32 tensor.
    """
    total = 0.0
    for f_t, f_s in zip(teacher_features, student_features):
        f_s, f_t = match_spatial_size(
            ops.cast(f_s, "float32"), ops.cast(f_t, "float32")
        )
        t = _channel_rows(f_t)
        s = _channel_rows(f_s)
        total = total + (
            _mean_poly_kernel(t, t)
            + _mean_poly_kernel(s, s)
            - 2.0 * _mean_poly_kernel(s, t)
        )
    return total


@register_loss("nst")
class NSTLoss(DistillationLoss):
    """Neuron selectivity transfer with the polynomial kernel.

    Each channel of a map (the larger map of a pair adaptive-average-pooled
    to the smaller `H × W`) is a sample `f ∈ R^{HW}`, L2-normalized; the
    teacher's `C_t` and the student's `C_s` channels are matched by the
    squared maximum mean discrepancy with `k(x, y) = (xᵀy)²`:

    `L_NST = 1/B Σ_b Σ_pairs [1/C_t² Σ_ij k(f_i, f_j)
    + 1/C_s² Σ_ij k(g_i, g_j) - 2/(C_s C_t) Σ_ij k(g_i, f_j)]`

    Per example (`reduction = "per_example"`); parameter-free; channel
    counts may differ.

    Reference: Huang & Wang, "Like What You Like: Knowledge Distill via
    Neuron Selectivity Transfer", 2017. RepDistiller (`distiller_zoo/NST.py`):
    polynomial kernel `d = 2, c = 0`, full MMD (`full_loss=True`), on
    `feat[1:-1]` (every stage output after ReLU, `stage1..stageK`), pair
    losses summed, weight `-b 50` (with `-a 0`, `-r 1`).

    Args:
        teacher_keys / student_keys: paired stage maps (default
            `stage1..stage3`, three-stage CIFAR ResNets/WRNs).
    """

    def __init__(self, teacher_keys=STAGE_KEYS, student_keys=None,
                 **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)

    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        check_feature_maps(self, teacher_shapes, student_shapes)

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        return nst_loss(teacher, student)
