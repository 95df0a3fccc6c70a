"""Contrastive representation distillation, CRD (Tian et al., ICLR 2020)."""

import math
import numbers

import keras
from keras import ops

from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import check_weight_decay
from keras_semkd.utils.numerics import l2_normalize
from keras_semkd.utils.numerics import torch_default_bias
from keras_semkd.utils.numerics import weight_decay_regularizer

# RepDistiller's `eps` in `ContrastLoss`.
_NCE_EPS = 1e-7


# ---------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------


def crd_sample_negatives(positive, num_data, num_negatives, seed=None):
    """Draws `num_negatives` indices per example uniformly from
    `[0, num_data)` without the example's own index (with replacement).

    Args:
        positive: `(batch,)` int32 dataset indices of the examples.
        num_data: size of the memory bank, >= 2.
        num_negatives: `K`, negatives per example.
        seed: a `keras.random.SeedGenerator` (or an int / None).

    Returns:
        `(batch, K)` int32 indices, none equal to the example's own index.
    """
    batch = positive.shape[0]
    if batch is None:
        batch = ops.shape(positive)[0]
    r = keras.random.randint(
        (batch, num_negatives), 0, num_data - 1, dtype="int32", seed=seed
    )
    # Shift the draws at or above the positive by one: uniform over the
    # other num_data - 1 indices.
    return r + ops.cast(r >= positive[:, None], "int32")


def crd_scores(anchor, bank, contrast_idx, temperature=0.07, dense=False):
    """`exp(⟨bank[idx_bk], anchor_b⟩ / T)`, RepDistiller's `ContrastMemory`
    scores before the division by `Z`.

    Args:
        anchor: `(batch, dim)` L2-normalized embeddings.
        bank: `(num_data, dim)` memory bank (no gradient flows into it).
        contrast_idx: `(batch, K + 1)` int indices into the bank, column 0
            the positive.
        temperature: NCE temperature `T`.
        dense: if True, scores every bank row, `anchor @ bankᵀ` of shape
            `(batch, num_data)`, and then picks the `K + 1` columns; this
            is much cheaper than gathering `(batch, K + 1, dim)` rows when
            `num_data` is not much larger than `K` (CIFAR: 50k vs 16k).
            Both give the same values.

    Returns:
        `(batch, K + 1)` float32 tensor.
    """
    bank = ops.stop_gradient(ops.cast(bank, "float32"))
    anchor = ops.cast(anchor, "float32")
    contrast_idx = ops.cast(contrast_idx, "int32")
    if dense:
        sims = ops.matmul(anchor, ops.transpose(bank))
        sims = ops.take_along_axis(sims, contrast_idx, axis=1)
    else:
        rows = ops.take(bank, contrast_idx, axis=0)
        sims = ops.einsum("bkd,bd->bk", rows, anchor)
    return ops.exp(sims / temperature)


def crd_normalization_constant(scores, num_data):
    """RepDistiller's estimate of the partition function from one batch of
    scores: `Z = mean(scores) · num_data` (no gradient)."""
    return ops.stop_gradient(ops.mean(scores) * float(num_data))


def crd_nce_loss(probs, num_data):
    """Per-example NCE loss of RepDistiller's `ContrastLoss` (Eq. 18).

    With `P_0` the positive's and `P_k` the negatives' normalized scores,
    `m = K` and noise `P_n = 1 / num_data`:

    `ℓ = -[log(P_0 / (P_0 + m·P_n + ε)) + Σ_k log(m·P_n / (P_k + m·P_n + ε))]`

    Its batch mean is `ContrastLoss`.

    Args:
        probs: `(batch, K + 1)` scores divided by `Z`, column 0 the
            positive.
        num_data: size of the training set (the bank).

    Returns:
        `(batch,)` float32 tensor.
    """
    probs = ops.cast(probs, "float32")
    m = ops.cast(ops.shape(probs)[1] - 1, "float32")
    m_pn = m / float(num_data)
    p_pos = probs[:, 0]
    p_neg = probs[:, 1:]
    log_d1 = ops.log(p_pos / (p_pos + m_pn + _NCE_EPS))
    log_d0 = ops.log(m_pn / (p_neg + m_pn + _NCE_EPS))
    return -(log_d1 + ops.sum(log_d0, axis=1))


def crd_memory_update(bank, embeddings, indices, momentum=0.5):
    """Momentum update of the rows `indices` of a memory bank.

    `bank[i] ← normalize(momentum · bank[i] + (1 - momentum) · v)`, the
    update of RepDistiller's `ContrastMemory` (duplicate indices in a batch:
    one of the writes wins, as with `index_copy_`).

    Args:
        bank: `(num_data, dim)` tensor.
        embeddings: `(batch, dim)` new embeddings (no gradient).
        indices: `(batch,)` int rows to update.
        momentum: weight of the old row.

    Returns:
        The updated `(num_data, dim)` bank.
    """
    indices = ops.cast(ops.reshape(indices, (-1,)), "int32")
    embeddings = ops.stop_gradient(ops.cast(embeddings, "float32"))
    rows = ops.take(bank, indices, axis=0)
    rows = rows * momentum + embeddings * (1.0 - momentum)
    rows = rows / ops.sqrt(ops.sum(ops.square(rows), axis=1, keepdims=True))
    return ops.scatter_update(bank, indices[:, None], rows)


def crd_loss(student_embed, teacher_embed, student_bank, teacher_bank,
             contrast_idx, z_student, z_teacher, temperature=0.07,
             num_data=None, dense=False):
    """Per-example two-sided CRD loss for fixed banks, indices and `Z`s.

    `ℓ = NCE(exp(⟨M_t[idx], v_s⟩ / T) / Z_s) + NCE(exp(⟨M_s[idx], v_t⟩ / T)
    / Z_t)`: the student embedding as anchor against the teacher bank, and
    the teacher embedding as anchor against the student bank
    (RepDistiller's `out_v1`/`out_v2`, `criterion_s`/`criterion_t`).

    Args:
        student_embed: `(batch, dim)` L2-normalized student embeddings.
        teacher_embed: `(batch, dim)` L2-normalized teacher embeddings.
        student_bank: `(num_data, dim)` memory of student embeddings.
        teacher_bank: `(num_data, dim)` memory of teacher embeddings.
        contrast_idx: `(batch, K + 1)` bank indices, column 0 the positive.
        z_student: normalization constant of the student-anchor scores.
        z_teacher: normalization constant of the teacher-anchor scores.
        temperature: NCE temperature.
        num_data: noise distribution size (default: rows of the banks).
        dense: see `crd_scores`.

    Returns:
        `(batch,)` float32 tensor.
    """
    if num_data is None:
        num_data = student_bank.shape[0]
    out_s = crd_scores(student_embed, teacher_bank, contrast_idx,
                       temperature, dense)
    out_t = crd_scores(teacher_embed, student_bank, contrast_idx,
                       temperature, dense)
    return (crd_nce_loss(out_s / z_student, num_data)
            + crd_nce_loss(out_t / z_teacher, num_data))


# ---------------------------------------------------------------------------
# Loss layer
# ---------------------------------------------------------------------------


@register_loss("crd")
class CRDLoss(DistillationLoss):
    """Contrastive representation distillation with memory banks.

    Embeddings `v_s = norm(W_s f_s + b_s)`, `v_t = norm(W_t f_t + b_t)`
    (learned linear heads to `feat_dim`, L2-normalized) of the student and
    teacher features of the same example `i`; memory banks `M_s`, `M_t`
    (`num_data × feat_dim`) of past embeddings of every training example.
    With `K` negatives `j_1..j_K` per example and
    `h(v, M, j) = exp(⟨M_j, v⟩ / T) / Z`:

    `ℓ_i = -log D(h(v_s, M_t, i)) - Σ_k log(1 - D(h(v_s, M_t, j_k)))
           + (same with v_t, M_s)`, `D(P) = P / (P + K / num_data)`

    (NCE with uniform noise, RepDistiller's `ContrastLoss` for both
    anchors). After the loss, the rows `i` of the banks move towards the
    new embeddings: `M[i] ← norm(m · M[i] + (1 - m) · v)`. `Z` (one per
    direction) is estimated once, on the first training batch, as
    `mean(exp(⟨M_j, v⟩ / T)) · num_data`, and then kept fixed.
    One value per example.

    Reference: Tian, Krishnan, Isola, "Contrastive Representation
    Distillation", ICLR 2020; code: RepDistiller `crd/criterion.py`,
    `crd/memory.py`. Defaults are RepDistiller's CIFAR-100 ones:
    `feat_dim = 128`, `K = 16384`, `T = 0.07`, momentum 0.5; term weight
    `β = 0.8` with cross-entropy weight 1.0 and KD weight 0.

    Reads the pooled features (`"embedding"`, RepDistiller's `feat[-1]`) of
    teacher and student (any rank; flattened) and each example's dataset
    index (`needs_indices`): the data yield targets
    `{"label": y, "index": i}`.

    Negatives. RepDistiller's data loader draws them (mode `"exact"`: from
    examples of other classes). Here, by default, they are drawn in-graph
    uniformly from the whole bank except the example itself (about
    1/num_classes of them then share the example's class; a documented
    deviation). To use loader-drawn negatives exactly as RepDistiller, let
    the data yield `"index"` as a `(batch, K + 1)` int array, column 0 the
    example's index and the other columns its negatives (RepDistiller's
    `sample_idx`); `K` is then the number of columns minus one.

    The embedding heads (trained with the student) and the banks and `Z`s
    (non-trainable variables, updated only in training steps) belong to
    this loss and are never exported with the student. The bank update
    assumes a single replica (RepDistiller is single-GPU too): with several
    replicas the embeddings would have to be all-gathered first.

    Args:
        num_data: number of training examples (rows of each bank), >= 2.
        feat_dim: embedding size.
        nce_k: negatives per example `K` when they are drawn in-graph.
        nce_t: temperature `T`, > 0.
        momentum: memory bank momentum `m` in `[0, 1)`.
        seed: seed of the in-graph negative sampler (int or None).
        weight_decay: PyTorch-SGD-style weight decay of the embedding
            heads (`L2(weight_decay / 2)` on kernels and biases, like the
            model zoo; RepDistiller decays them with the student's 5e-4).
            Default 0: no regularizer.
        teacher_keys / student_keys: the features to embed (default
            `"embedding"`).
    """

    needs_indices = True
    run_values = ("num_data", "weight_decay")

    def __init__(self, num_data, feat_dim=128, nce_k=16384, nce_t=0.07,
                 momentum=0.5, seed=None, weight_decay=0.0,
                 teacher_keys="embedding", student_keys=None, **kwargs):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        if len(self.teacher_keys) != 1:
            raise ValueError(
                "CRDLoss reads exactly one teacher and one student feature. "
                f"Received: teacher_keys={self.teacher_keys}, "
                f"student_keys={self.student_keys}"
            )
        for arg, value, low in (("num_data", num_data, 2),
                                ("feat_dim", feat_dim, 1),
                                ("nce_k", nce_k, 1)):
            if not (isinstance(value, numbers.Integral)
                    and not isinstance(value, bool) and value >= low):
                raise ValueError(
                    f"{arg} must be an integer >= {low}. "
                    f"Received: {arg}={value!r}"
                )
        if not nce_t > 0:
            raise ValueError(f"nce_t must be > 0. Received: nce_t={nce_t}")
        if not 0 <= momentum < 1:
            raise ValueError(
                f"momentum must lie in [0, 1). Received: momentum={momentum}"
            )
        self.num_data = int(num_data)
        self.feat_dim = int(feat_dim)
        self.nce_k = int(nce_k)
        self.nce_t = float(nce_t)
        self.momentum = float(momentum)
        self.seed = seed
        self.weight_decay = check_weight_decay(weight_decay)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Scoring all bank rows beats gathering B·(K+1) rows unless the
        # bank is much larger than K (e.g. ImageNet-size banks).
        self.dense_scores = self.num_data <= 8 * (self.nce_k + 1)

    # -- building ----------------------------------------------------------
    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        for side, key, shapes in (
            ("teacher", self.teacher_keys[0], teacher_shapes),
            ("student", self.student_keys[0], student_shapes),
        ):
            shape = tuple(shapes[key])
            if len(shape) < 2 or any(d is None for d in shape[1:]):
                raise ValueError(
                    f"CRD embeds the {side} feature {key!r}, which needs a "
                    "batch axis and static other dimensions. Received: "
                    f"shape {shape}"
                )

    def build_from_specs(self, teacher_shapes, student_shapes):
        self.student_dim = int(math.prod(
            student_shapes[self.student_keys[0]][1:]))
        self.teacher_dim = int(math.prod(
            teacher_shapes[self.teacher_keys[0]][1:]))
        # PyTorch `nn.Linear`'s default init, U(±1/√fan_in), for the
        # kernels and the biases.
        k_s = torch_default_bias(self.student_dim)
        b_s = torch_default_bias(self.student_dim)
        k_t = torch_default_bias(self.teacher_dim)
        b_t = torch_default_bias(self.teacher_dim)
        reg = weight_decay_regularizer(self.weight_decay)
        # Sub-layer variables are named under this loss ("crd/...").
        with keras.name_scope(self.name):
            self.embed_student = keras.layers.Dense(
                self.feat_dim, kernel_initializer=k_s, bias_initializer=b_s,
                kernel_regularizer=reg, bias_regularizer=reg,
                dtype="float32", name="embed_student",
            )
            self.embed_student.build((None, self.student_dim))
            self.embed_teacher = keras.layers.Dense(
                self.feat_dim, kernel_initializer=k_t, bias_initializer=b_t,
                kernel_regularizer=reg, bias_regularizer=reg,
                dtype="float32", name="embed_teacher",
            )
            self.embed_teacher.build((None, self.teacher_dim))
        stdv = 1.0 / math.sqrt(self.feat_dim / 3.0)
        # RepDistiller: memory_v1 holds student, memory_v2 teacher
        # embeddings; both start as U(-stdv, stdv).
        self.student_memory = self.add_weight(
            name="student_memory", shape=(self.num_data, self.feat_dim),
            initializer=keras.initializers.RandomUniform(-stdv, stdv),
            trainable=False, dtype="float32",
        )
        self.teacher_memory = self.add_weight(
            name="teacher_memory", shape=(self.num_data, self.feat_dim),
            initializer=keras.initializers.RandomUniform(-stdv, stdv),
            trainable=False, dtype="float32",
        )
        # Z < 0 means "not estimated yet".
        self.z_student = self.add_weight(
            name="z_student", shape=(), trainable=False, dtype="float32",
            initializer=keras.initializers.Constant(-1.0),
        )
        self.z_teacher = self.add_weight(
            name="z_teacher", shape=(), trainable=False, dtype="float32",
            initializer=keras.initializers.Constant(-1.0),
        )
        self.built = True

    # -- computation -------------------------------------------------------
    def embed(self, teacher_feature, student_feature):
        """Returns the L2-normalized `(v_t, v_s)` embeddings."""
        f_s = ops.reshape(ops.cast(student_feature, "float32"),
                          (-1, self.student_dim))
        f_t = ops.reshape(ops.cast(teacher_feature, "float32"),
                          (-1, self.teacher_dim))
        return (l2_normalize(self.embed_teacher(f_t)),
                l2_normalize(self.embed_student(f_s)))

    def contrast_indices(self, indices):
        """Returns `(positive, contrast_idx)` from the data's indices:
        `(batch,)` (negatives drawn here) or `(batch, K + 1)` (given)."""
        indices = ops.cast(indices, "int32")
        if len(indices.shape) == 2 and indices.shape[1] == 1:
            indices = indices[:, 0]
        if len(indices.shape) == 1:
            negatives = crd_sample_negatives(
                indices, self.num_data, self.nce_k, self.seed_generator
            )
            return indices, ops.concatenate(
                [indices[:, None], negatives], axis=1
            )
        if len(indices.shape) == 2:
            return indices[:, 0], indices
        raise ValueError(
            "CRD reads dataset indices of shape (batch,) or, with the "
            "negatives, (batch, K + 1). Received: indices of shape "
            f"{tuple(indices.shape)}"
        )

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        if indices is None:
            raise ValueError(
                "CRD needs each example's dataset index: let the data yield "
                "targets {'label': y, 'index': i}. Received: indices=None"
            )
        v_t, v_s = self.embed(teacher[0], student[0])
        positive, contrast_idx = self.contrast_indices(indices)
        student_bank = ops.convert_to_tensor(self.student_memory)
        teacher_bank = ops.convert_to_tensor(self.teacher_memory)
        # RepDistiller's out_v1 (student anchor, teacher bank) and out_v2.
        out_s = crd_scores(v_s, teacher_bank, contrast_idx, self.nce_t,
                           self.dense_scores)
        out_t = crd_scores(v_t, student_bank, contrast_idx, self.nce_t,
                           self.dense_scores)
        z_s = ops.convert_to_tensor(self.z_student)
        z_t = ops.convert_to_tensor(self.z_teacher)
        z_s = ops.where(z_s < 0,
                        crd_normalization_constant(out_s, self.num_data), z_s)
        z_t = ops.where(z_t < 0,
                        crd_normalization_constant(out_t, self.num_data), z_t)
        loss = (crd_nce_loss(out_s / z_s, self.num_data)
                + crd_nce_loss(out_t / z_t, self.num_data))
        if training:
            self.z_student.assign(z_s)
            self.z_teacher.assign(z_t)
            self.student_memory.assign(crd_memory_update(
                student_bank, v_s, positive, self.momentum))
            self.teacher_memory.assign(crd_memory_update(
                teacher_bank, v_t, positive, self.momentum))
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_data": self.num_data,
                "feat_dim": self.feat_dim,
                "nce_k": self.nce_k,
                "nce_t": self.nce_t,
                "momentum": self.momentum,
                "seed": self.seed,
                "weight_decay": self.weight_decay,
            }
        )
        return config
