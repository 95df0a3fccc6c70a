"""Similarity-preserving knowledge distillation (Tung & Mori, 2019)."""

from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import flatten_features
from keras_semkd.utils.numerics import l2_normalize


def similarity_matrix(feature):
    """Row-L2-normalized Gram matrix `normalize(Q Qᵀ)` of the flattened
    features `Q` (`(B, D)`): shape `(B, B)`."""
    q = flatten_features(feature)
    gram = ops.matmul(q, ops.transpose(q))
    return l2_normalize(gram, axis=1)


def sp_loss(teacher_features, student_features):
    """Batch-level similarity-preserving loss summed over feature pairs.

    `Σ_pairs 1/B² ‖G_t - G_s‖_F²` with `G = normalize_rows(Q Qᵀ)`
    (RepDistiller's `Similarity`). Not decomposable per example.

    Args:
        teacher_features: list of `(B, ...)` teacher features.
        student_features: list of `(B, ...)` student features, paired with
            `teacher_features` (any shapes: only the `B × B` Gram matrices
            are compared).

    Returns:
        scalar float32 tensor.
    """
    total = 0.0
    for f_t, f_s in zip(teacher_features, student_features):
        g_t = similarity_matrix(f_t)
        g_s = similarity_matrix(f_s)
        bsz = ops.cast(ops.shape(g_t)[0], "float32")
        total = total + ops.sum(ops.square(g_t - g_s)) / (bsz * bsz)
    return total


@register_loss("sp")
class SPLoss(DistillationLoss):
    """Similarity-preserving distillation on batch similarity matrices.

    With `Q ∈ R^{B×D}` the flattened features of a batch and
    `G = normalize_rows(Q Qᵀ) ∈ R^{B×B}` (each row divided by its L2 norm):

    `L_SP = Σ_pairs 1/B² ‖G_t - G_s‖_F²`

    Batch-level (`reduction = "batch"`); parameter-free; teacher and student
    shapes may differ arbitrarily.

    Reference: Tung & Mori, "Similarity-Preserving Knowledge Distillation",
    ICCV 2019. RepDistiller (`distiller_zoo/SP.py`): weight `-b 3000` (with
    `-a 0`, `-r 1`) on `feat[-2]` only, i.e. the last stage output after
    ReLU, `stageK` (`"stage3"`, the default here, for the three-stage CIFAR
    ResNets/WRNs; recipes set the last stage of deeper models).

    Args:
        teacher_keys / student_keys: paired features (default `"stage3"`);
            the pair losses are summed.
    """

    reduction = "batch"

    def __init__(self, teacher_keys="stage3", student_keys=None, **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        return sp_loss(teacher, student)
