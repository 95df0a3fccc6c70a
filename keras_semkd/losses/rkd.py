"""Relational knowledge distillation (Park et al., 2019)."""

from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import flatten_features
from keras_semkd.utils.numerics import l2_normalize


def pairwise_distances(e, eps=1e-12):
    """Euclidean distance matrix `(B, B)` of the rows of `e`, computed as
    RepDistiller's `pdist`: `sqrt(max(‖e_i‖² + ‖e_j‖² - 2⟨e_i, e_j⟩, eps))`
    with a zero diagonal."""
    sq = ops.sum(ops.square(e), axis=1)
    prod = ops.matmul(e, ops.transpose(e))
    d2 = ops.expand_dims(sq, 1) + ops.expand_dims(sq, 0) - 2.0 * prod
    d = ops.sqrt(ops.maximum(d2, eps))
    off_diagonal = 1.0 - ops.eye(ops.shape(e)[0], dtype="float32")
    return d * off_diagonal


def _mean_positive(d):
    """Mean of the entries `> 0` (RepDistiller: `d[d > 0].mean()`); 1 when
    there are none (a batch of one), where PyTorch would give NaN."""
    mask = ops.cast(d > 0, "float32")
    count = ops.sum(mask)
    mean = ops.sum(d * mask) / ops.maximum(count, 1.0)
    return ops.where(count > 0, mean, 1.0)


def smooth_l1(x, y):
    """`F.smooth_l1_loss(x, y)` (beta 1, mean over all elements)."""
    diff = ops.abs(x - y)
    return ops.mean(ops.where(diff < 1.0, 0.5 * ops.square(diff), diff - 0.5))


def _angles(e):
    """`(B, B, B)` cosines `⟨(e_j - e_i)/‖·‖, (e_k - e_i)/‖·‖⟩`."""
    diff = ops.expand_dims(e, 0) - ops.expand_dims(e, 1)
    unit = l2_normalize(diff, axis=2)
    return ops.matmul(unit, ops.transpose(unit, (0, 2, 1)))


def rkd_loss(teacher_feature, student_feature, distance_weight=25.0,
             angle_weight=50.0, eps=1e-12):
    """Batch-level RKD loss: `w_d · L_dist + w_a · L_angle`.

    Distance term: smooth-L1 between the pairwise distance matrices, each
    divided by the mean of its positive entries. Angle term: smooth-L1
    between the `B³` cosines of the angles `∠(e_j, e_i, e_k)`. Both are
    means over all entries, as in RepDistiller's `RKDLoss`.

    Args:
        teacher_feature: `(B, ...)` teacher features (flattened).
        student_feature: `(B, ...)` student features (flattened).
        distance_weight: `w_d`.
        angle_weight: `w_a`.
        eps: floor of the squared distances.

    Returns:
        scalar float32 tensor.
    """
    t = flatten_features(teacher_feature)
    s = flatten_features(student_feature)
    loss = 0.0
    if distance_weight:
        t_d = pairwise_distances(t, eps)
        t_d = t_d / _mean_positive(t_d)
        s_d = pairwise_distances(s, eps)
        s_d = s_d / _mean_positive(s_d)
        loss = loss + distance_weight * smooth_l1(s_d, t_d)
    if angle_weight:
        loss = loss + angle_weight * smooth_l1(_angles(s), _angles(t))
    return loss


@register_loss("rkd")
class RKDLoss(DistillationLoss):
    """Relational knowledge distillation (distance + angle).

    With `ψ_D(i, j) = ‖e_i - e_j‖ / μ` (`μ` the mean positive distance of
    the batch) and `ψ_A(i, j, k) = ⟨(e_j - e_i)/‖·‖, (e_k - e_i)/‖·‖⟩`:

    `L_RKD = w_d · 1/B² Σ_{ij} ℓ_δ(ψ_D^s - ψ_D^t) +
    w_a · 1/B³ Σ_{ijk} ℓ_δ(ψ_A^s - ψ_A^t)`

    with `ℓ_δ` the Huber / smooth-L1 loss (δ = 1). Batch-level
    (`reduction = "batch"`); parameter-free; teacher and student dimensions
    may differ.

    Reference: Park et al., "Relational Knowledge Distillation", CVPR 2019.
    RepDistiller (`distiller_zoo/RKD.py`): `w_d = 25`, `w_a = 50`, on
    `feat[-1]` (the pooled penultimate features, `"embedding"`, the default
    here), weight `-b 1` (with `-a 0`, `-r 1`).

    Args:
        distance_weight: `w_d`.
        angle_weight: `w_a`.
        eps: floor of the squared pairwise distances (`1e-12`).
        teacher_keys / student_keys: one feature each (default
            `"embedding"`); maps are flattened first.
    """

    reduction = "batch"

    def __init__(self, distance_weight=25.0, angle_weight=50.0, eps=1e-12,
                 teacher_keys="embedding", student_keys=None, **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if len(self.teacher_keys) != 1:
            raise ValueError(
                "RKDLoss reads exactly one teacher and one student feature. "
                f"Received: teacher_keys={self.teacher_keys}"
            )
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                "RKD weights must be >= 0. Received: "
                f"distance_weight={distance_weight}, "
                f"angle_weight={angle_weight}"
            )
        if not eps > 0:
            raise ValueError(f"eps must be > 0. Received: eps={eps}")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.eps = float(eps)

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        return rkd_loss(teacher[0], student[0], self.distance_weight,
                        self.angle_weight, self.eps)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "distance_weight": self.distance_weight,
                "angle_weight": self.angle_weight,
                "eps": self.eps,
            }
        )
        return config
