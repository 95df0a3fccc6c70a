"""Correlation congruence (Peng et al., 2019), as in RepDistiller."""

import math

import keras
from keras import layers
from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import already_built_for
from keras_semkd.losses.base import pair_specs
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import check_weight_decay
from keras_semkd.utils.numerics import flatten_features
from keras_semkd.utils.numerics import torch_default_bias
from keras_semkd.utils.numerics import torch_default_kernel
from keras_semkd.utils.numerics import weight_decay_regularizer


def cc_loss(teacher_embedded, student_embedded):
    """Batch-level correlation congruence loss on embedded features.

    `1/(B-1) Σ_{i<B-1} Σ_d δ_{i,d} δ_{i+1,d}` with `δ = |e_s - e_t|`:
    RepDistiller's `Correlation` (code from the CC authors), which couples
    each example with the next one in the batch, so it is not
    decomposable per example. For `B = 1` it returns 0 (PyTorch's mean of
    an empty tensor would be NaN).

    Args:
        teacher_embedded: `(B, D)` teacher embeddings.
        student_embedded: `(B, D)` student embeddings.

    Returns:
        scalar float32 tensor.
    """
    e_t = ops.cast(teacher_embedded, "float32")
    e_s = ops.cast(student_embedded, "float32")
    delta = ops.abs(e_s - e_t)
    prod = ops.sum(delta[:-1] * delta[1:], axis=1)
    pairs = ops.cast(ops.shape(delta)[0] - 1, "float32")
    return ops.sum(prod) / ops.maximum(pairs, 1.0)


@register_loss("cc")
class CCLoss(DistillationLoss):
    """Correlation congruence through learned linear embeddings.

    `e_t = W_t f_t + b_t`, `e_s = W_s f_s + b_s` (both `feat_dim`-dim,
    RepDistiller's `LinearEmbed`), `δ = |e_s - e_t|`:

    `L_CC = 1/(B-1) Σ_{i=1}^{B-1} ⟨δ_i, δ_{i+1}⟩`

    Batch-level (`reduction = "batch"`). Both embeddings are weights of this
    loss, created by `build_from_specs` and trained with the student (the
    teacher's features are frozen, its embedding is not), as RepDistiller
    puts `embed_s` and `embed_t` in its trainable list.

    Reference: Peng et al., "Correlation Congruence for Knowledge
    Distillation", ICCV 2019. RepDistiller (`distiller_zoo/CC.py`,
    `train_student.py`): `--feat_dim 128`, `LinearEmbed` (a linear layer
    without the L2 normalization of its `Embed`) on `feat[-1]`, the pooled
    penultimate features (`"embedding"`, the default here); weight
    `-b 0.02` (with `-a 0`, `-r 1`).

    Args:
        feat_dim: embedding dimension (128).
        weight_decay: L2 coefficient (PyTorch SGD convention) on the
            embeddings; RepDistiller decays them with the student's `5e-4`.
        teacher_keys / student_keys: one feature each (default
            `"embedding"`); maps are flattened first.
    """

    run_values = ("weight_decay",)

    reduction = "batch"

    def __init__(self, feat_dim=128, weight_decay=0.0,
                 teacher_keys="embedding", student_keys=None, **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if len(self.teacher_keys) != 1:
            raise ValueError(
                "CCLoss reads exactly one teacher and one student feature. "
                f"Received: teacher_keys={self.teacher_keys}"
            )
        if not (isinstance(feat_dim, int) and feat_dim >= 1):
            raise ValueError(
                f"feat_dim must be a positive integer. "
                f"Received: feat_dim={feat_dim!r}"
            )
        self.feat_dim = feat_dim
        self.weight_decay = check_weight_decay(weight_decay)
        self.embed_t = None
        self.embed_s = None

    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        for side, key, shapes in (
            ("teacher", self.teacher_keys[0], teacher_shapes),
            ("student", self.student_keys[0], student_shapes),
        ):
            shape = tuple(shapes[key])
            if len(shape) < 2 or any(d is None for d in shape[1:]):
                raise ValueError(
                    "CCLoss reads features with static non-batch "
                    f"dimensions. Received: {side} output {key!r} of shape "
                    f"{shape}"
                )

    def _embed(self, dim_in, name):
        reg = weight_decay_regularizer(self.weight_decay)
        dense = layers.Dense(
            self.feat_dim,
            kernel_initializer=torch_default_kernel(),
            bias_initializer=torch_default_bias(dim_in),
            kernel_regularizer=reg, bias_regularizer=reg,
            dtype=self.dtype_policy, name=name,
        )
        dense.build((None, dim_in))
        return dense

    def build_from_specs(self, teacher_shapes, student_shapes):
        self.check_specs(teacher_shapes, student_shapes)
        specs = pair_specs(self, teacher_shapes, student_shapes)
        if already_built_for(self, self.embed_t, specs):
            return
        t_shape, s_shape = specs[0]
        with keras.name_scope(self.name):
            self.embed_t = self._embed(math.prod(t_shape), "embed_t")
            self.embed_s = self._embed(math.prod(s_shape), "embed_s")
        self._built_specs = specs
        self.built = True

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        if self.embed_t is None:
            raise ValueError(
                f"Loss {self.name!r} has no embeddings yet: call "
                "build_from_specs(teacher_shapes, student_shapes) first (the "
                "Distiller does)."
            )
        e_t = self.embed_t(flatten_features(teacher[0]))
        e_s = self.embed_s(flatten_features(student[0]))
        return cc_loss(e_t, e_s)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"feat_dim": self.feat_dim, "weight_decay": self.weight_decay}
        )
        return config
