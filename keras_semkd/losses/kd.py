"""Classic knowledge distillation (Hinton et al., 2015)."""

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss
from keras_semkd.utils import numerics


#: Per-example Hinton KD loss (`keras_semkd.utils.numerics.kd_loss`; the
#: function lives with the shared numerics so other losses use it without
#: importing this module).
kd_loss = numerics.kd_loss


@register_loss("kd")
class KDLoss(DistillationLoss):
    """Hinton knowledge distillation on logits.

    `L_KD = T² · 1/B Σ_b KL(σ(z_t,b / T) ‖ σ(z_s,b / T))`

    Reference: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
    Network", 2015. Default in the CIFAR-100 protocol (RepDistiller):
    `T = 4`, weight 0.9 with cross-entropy weight 0.1.

    Args:
        temperature: softening temperature, > 0.
        teacher_keys / student_keys: the logits outputs (default
            `"logits"`).
    """

    def __init__(self, temperature=4.0, teacher_keys="logits",
                 student_keys=None, **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if not temperature > 0:
            raise ValueError(
                "temperature must be > 0. "
                f"Received: temperature={temperature}"
            )
        if len(self.teacher_keys) != 1:
            raise ValueError(
                "KDLoss reads exactly one logits output. "
                f"Received: teacher_keys={self.teacher_keys}"
            )
        self.temperature = float(temperature)

    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        t = teacher_shapes[self.teacher_keys[0]]
        s = student_shapes[self.student_keys[0]]
        if len(t) != 2 or len(s) != 2 or t[-1] != s[-1]:
            raise ValueError(
                "KD needs teacher and student logits of the same number of "
                f"classes. Received: teacher {self.teacher_keys[0]} shape "
                f"{tuple(t)}, student {self.student_keys[0]} shape "
                f"{tuple(s)}"
            )

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        return kd_loss(teacher[0], student[0], self.temperature)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config
