"""Probabilistic knowledge transfer (Passalis & Tefas, 2018)."""

from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import flatten_features


def _cosine_conditional(x, eps):
    """Row-stochastic matrix of the cosine kernel `(cos + 1) / 2`."""
    sq = ops.sum(ops.square(x), axis=1, keepdims=True)
    # sqrt(max(sq, tiny)): same value as PyTorch's `sqrt(sq)` for any
    # non-degenerate row, and a finite gradient for an all-zero row.
    norm = ops.sqrt(ops.maximum(sq, 1e-30))
    x = x / (norm + eps)
    x = ops.where(ops.isnan(x), 0.0, x)
    sim = (ops.matmul(x, ops.transpose(x)) + 1.0) / 2.0
    return sim / ops.sum(sim, axis=1, keepdims=True)


def pkt_loss(teacher_feature, student_feature, eps=1e-7):
    """Batch-level PKT loss with the cosine kernel.

    `P = rownorm((cos(t_i, t_j) + 1) / 2)`, `Q` likewise for the student;
    `mean_{ij} P_ij log((P_ij + eps) / (Q_ij + eps))` over the `B × B`
    entries (RepDistiller's `PKT.cosine_similarity_loss`, authors' code).

    Args:
        teacher_feature: `(B, ...)` teacher features (flattened).
        student_feature: `(B, ...)` student features (flattened).
        eps: the `1e-7` of the normalization and of the log ratio.

    Returns:
        scalar float32 tensor.
    """
    p = _cosine_conditional(flatten_features(teacher_feature), eps)
    q = _cosine_conditional(flatten_features(student_feature), eps)
    return ops.mean(p * ops.log((p + eps) / (q + eps)))


@register_loss("pkt")
class PKTLoss(DistillationLoss):
    """Probabilistic knowledge transfer with a cosine kernel.

    With `K(a, b) = (cos(a, b) + 1) / 2` and the conditional probabilities
    `p_{j|i} = K(t_i, t_j) / Σ_k K(t_i, t_k)` (teacher), `q_{j|i}` likewise
    for the student:

    `L_PKT = 1/B² Σ_{ij} p_{j|i} log((p_{j|i} + ε) / (q_{j|i} + ε))`

    Batch-level (`reduction = "batch"`: a relation inside the batch, every
    row depends on all examples). Parameter-free; teacher and student
    dimensions may differ.

    Reference: Passalis & Tefas, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV 2018. RepDistiller
    (`distiller_zoo/PKT.py`, authors' code): `ε = 1e-7`, on `feat[-1]` (the
    pooled penultimate features, `"embedding"`, the default here), weight
    `-b 30000` (with `-a 0`, `-r 1`).

    Args:
        eps: `ε` of the normalization and of the log ratio.
        teacher_keys / student_keys: one feature each (default
            `"embedding"`); maps are flattened first.
    """

    reduction = "batch"

    def __init__(self, eps=1e-7, teacher_keys="embedding", student_keys=None,
                 **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if len(self.teacher_keys) != 1:
            raise ValueError(
                "PKTLoss reads exactly one teacher and one student feature. "
                f"Received: teacher_keys={self.teacher_keys}"
            )
        if not eps > 0:
            raise ValueError(f"eps must be > 0. Received: eps={eps}")
        self.eps = float(eps)

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        return pkt_loss(teacher[0], student[0], self.eps)

    def get_config(self):
        config = super().get_config()
        config["eps"] = self.eps
        return config
