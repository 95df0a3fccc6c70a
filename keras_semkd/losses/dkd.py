"""Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022)."""

from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import EpochWarmup
from keras_semkd.losses.base import register_loss

# mdistiller removes the target class from the softmax by subtracting this
# constant from its logit (`logits / T - 1000 * gt_mask`); kept as is.
_MASK_OFFSET = 1000.0


def dkd_loss(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0,
             temperature=4.0):
    """Per-example DKD loss, `α · TCKD + β · NCKD` (no warm-up factor).

    With `p = softmax(z / T)` and `t` the label of the example:

    - TCKD: `T² · KL(b_t ‖ b_s)` between the binary distributions
      `b = [p_t, 1 - p_t]` (target class vs. all other classes);
    - NCKD: `T² · KL(p̂_t ‖ p̂_s)` between the distributions over the
      non-target classes, `p̂ = softmax(z / T - 1000 · onehot(t))`
      (mdistiller's masking, which gives the target class probability 0).

    The batch mean of this value is mdistiller's `dkd_loss` (its KL terms
    are `sum` reductions divided by the batch size). The binary
    probabilities are taken in log space (log-sum-exp over the target class
    and over the other classes) instead of `log(sum(softmax))`; the two are
    equal, the first never takes `log(0)`.

    Args:
        teacher_logits: `(batch, classes)` teacher logits.
        student_logits: `(batch, classes)` student logits.
        labels: `(batch,)` integer class labels.
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: softening temperature `T > 0`.

    Returns:
        `(batch,)` float32 tensor.
    """
    t = ops.cast(teacher_logits, "float32") / temperature
    s = ops.cast(student_logits, "float32") / temperature
    num_classes = s.shape[-1]
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    gt = ops.one_hot(labels, num_classes, dtype="float32")

    # Non-target distributions (target logit pushed down by 1000).
    t_other = t - _MASK_OFFSET * gt
    s_other = s - _MASK_OFFSET * gt
    log_p_t_other = ops.log_softmax(t_other, axis=-1)
    log_p_s_other = ops.log_softmax(s_other, axis=-1)
    nckd = ops.sum(
        ops.exp(log_p_t_other) * (log_p_t_other - log_p_s_other), axis=-1
    )

    # Binary target / non-target distributions, in log space.
    def _binary_log_probs(z, z_other):
        lse = ops.logsumexp(z, axis=-1)
        log_gt = ops.sum(z * gt, axis=-1) - lse
        log_rest = ops.logsumexp(z_other, axis=-1) - lse
        return ops.stack([log_gt, log_rest], axis=-1)

    log_b_t = _binary_log_probs(t, t_other)
    log_b_s = _binary_log_probs(s, s_other)
    tckd = ops.sum(ops.exp(log_b_t) * (log_b_t - log_b_s), axis=-1)

    return (alpha * tckd + beta * nckd) * (temperature**2)


@register_loss("dkd")
class DKDLoss(EpochWarmup, DistillationLoss):
    """Decoupled knowledge distillation on logits.

    `L_DKD = w(e) · T² · [α · KL(b_t ‖ b_s) + β · KL(p̂_t ‖ p̂_s)]`

    where `b = [p_y, 1 - p_y]` is the binary target / non-target split of
    `p = σ(z / T)` (TCKD), `p̂` the softmax over the non-target classes
    (NCKD), and `w(e) = min(e / warmup_epochs, 1)` a linear warm-up over
    epochs `e = 1, 2, ...` (the `Distiller` calls `set_epoch` with the
    0-based Keras epoch `e - 1`, so the first epoch has weight
    `1 / warmup_epochs`, as in mdistiller). One value per example.

    Reference: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge
    Distillation", CVPR 2022; code: mdistiller `distillers/DKD.py`.
    Defaults are mdistiller's CIFAR-100 ones (`cfg.DKD`): `α = 1`, `β = 8`,
    `T = 4`, warm-up 20 epochs, term weight 1.0 with cross-entropy weight
    1.0 (mdistiller's per-pair configs change `β` for some pairs, e.g. 6
    for WRN-40-2 → WRN-16-2, 2 for ResNet-56 → ResNet-20).

    Reads the teacher and student logits (`"logits"`) and the labels.

    Args:
        alpha: weight of the target-class term TCKD, >= 0.
        beta: weight of the non-target-class term NCKD, >= 0.
        temperature: softening temperature, > 0.
        warmup_epochs: length of the linear warm-up in epochs, >= 0
            (0: no warm-up).
        teacher_keys / student_keys: the logits outputs (default
            `"logits"`).
    """

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0,
                 warmup_epochs=20, teacher_keys="logits", student_keys=None,
                 **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if len(self.teacher_keys) != 1:
            raise ValueError(
                "DKDLoss reads exactly one logits output. "
                f"Received: teacher_keys={self.teacher_keys}"
            )
        if not temperature > 0:
            raise ValueError(
                f"temperature must be > 0. Received: temperature={temperature}"
            )
        for arg, value in (("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise ValueError(
                    f"{arg} must be >= 0. Received: {arg}={value}"
                )
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.init_warmup(warmup_epochs)

    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        t = teacher_shapes[self.teacher_keys[0]]
        s = student_shapes[self.student_keys[0]]
        if len(t) != 2 or len(s) != 2 or t[-1] != s[-1] or s[-1] < 2:
            raise ValueError(
                "DKD needs teacher and student logits of the same number "
                "(>= 2) of classes. Received: teacher "
                f"{self.teacher_keys[0]} shape {tuple(t)}, student "
                f"{self.student_keys[0]} shape {tuple(s)}"
            )

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        if labels is None:
            raise ValueError(
                "DKD needs the labels (the target class splits the "
                "distributions). Received: labels=None"
            )
        loss = dkd_loss(teacher[0], student[0], labels, self.alpha,
                        self.beta, self.temperature)
        return self.warmup_factor() * loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "beta": self.beta,
                "temperature": self.temperature,
                "warmup_epochs": self.warmup_epochs,
            }
        )
        return config
