"""SAKD: semantic-aware knowledge distillation with feature uniformization.

Guo, Han, Wang, Zhang, Han, "Semantic-aware knowledge distillation with
parameter-free feature uniformization", Visual Intelligence 1:6, 2023.

Only the abstract is public. It fixes two pieces: a *parameter-free
self-attention* operation that maps teacher and student features of
different dimensions to vectors of one length, identically for both, and a
*standalone feature-based classification branch* that extracts
semantic-aware knowledge to guide the student. How the pieces are combined
and trained is this project's design (`docs/method.md`), exposed as
configuration so that each choice can be ablated.
"""

import math
import numbers

from keras import ops

from keras_semkd.layers.semantic_head import SemanticHead
from keras_semkd.layers.uniformization import AttentionUniformization
from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss
from keras_semkd.losses.kd import kd_loss

ALIGNMENTS = ("kl", "mse", "cosine")
SEMANTICS = ("shared", "separate", "none")
HEAD_SCOPES = ("joint", "per_stage")
HEAD_INPUTS = ("uniformized", "pooled")


def alignment_distance(teacher, student, alignment="kl", rows=1):
    """Per-example distance between uniformized vectors.

    Args:
        teacher: `(B, L)` teacher vectors (log-probabilities for `"kl"`).
        student: `(B, L)` student vectors (log-probabilities for `"kl"`).
        alignment: `"kl"`: `1/R Σ_r KL(p_T,r ‖ p_S,r)` over the `R = rows`
            attention rows (`L = R·N`), from log-probabilities;
            `"mse"`: `1/R ‖u_S − u_T‖²` (squared distance per row);
            `"cosine"`: `1 − cos(u_S, u_T)`.
        rows: `R`, the number of rows the vectors are made of.

    Returns:
        `(B,)` float32 tensor.
    """
    t = ops.cast(teacher, "float32")
    s = ops.cast(student, "float32")
    if alignment == "kl":
        length = t.shape[-1]
        if length is None or length % rows:
            raise ValueError(
                f"KL alignment needs vectors made of {rows} rows. Received: "
                f"vectors of length {length}"
            )
        t = ops.reshape(t, (-1, rows, length // rows))
        s = ops.reshape(s, (-1, rows, length // rows))
        kl = ops.sum(ops.exp(t) * (t - s), axis=-1)
        return ops.mean(kl, axis=-1)
    if alignment == "mse":
        return ops.sum(ops.square(s - t), axis=-1) / float(rows)
    if alignment == "cosine":
        dot = ops.sum(s * t, axis=-1)
        norms = ops.sqrt(
            ops.maximum(ops.sum(ops.square(s), axis=-1), 1e-12)
            * ops.maximum(ops.sum(ops.square(t), axis=-1), 1e-12)
        )
        return 1.0 - dot / norms
    raise ValueError(
        f"alignment must be one of {ALIGNMENTS}. "
        f"Received: alignment={alignment!r}"
    )


def semantic_guidance(teacher_logits, student_logits, labels,
                      temperature=4.0, ce_weight=1.0, kd_weight=1.0):
    """Per-example guidance of the student through the semantic branch.

    `β · CE(y, h_S) + γ · τ² · KL(σ(h_T/τ) ‖ σ(h_S/τ))`, where `h_T`, `h_S`
    are the branch's logits on the teacher's and the student's inputs.

    Returns:
        `(B,)` float32 tensor.
    """
    s = ops.cast(student_logits, "float32")
    out = 0.0
    if ce_weight:
        out = out + ce_weight * ops.sparse_categorical_crossentropy(
            labels, s, from_logits=True
        )
    if kd_weight:
        out = out + kd_weight * kd_loss(teacher_logits, s, temperature)
    if not ce_weight and not kd_weight:
        out = ops.zeros_like(s[:, 0])
    return out


def _check_weight(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not value >= 0 or math.isinf(value):
        raise ValueError(
            f"{name} must be a finite number >= 0. Received: {name}={value!r}"
        )
    return value


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {choices}. Received: {name}={value!r}"
        )
    return value


@register_loss("sakd")
class SAKDLoss(DistillationLoss):
    """Semantic-aware KD with parameter-free feature uniformization.

    For every stage pair `k` (teacher key `k` ↔ student key `k`, any
    shapes), `U` = `AttentionUniformization` (one op, no weights, applied to
    both networks) gives `u_T^k = U(f_T^k)` and `u_S^k = U(f_S^k)` of the
    same length. With `g` the semantic head(s), `ḡ` the same head with
    stop-gradient weights, `sg` stop-gradient and `r(e) = min(1, e / E_w)`
    the warm-up ramp, the per-example loss is (default `semantic="shared"`,
    `head_scope="joint"`, `u = [u^1; …; u^K]`):

        L = α · 1/K Σ_k D(u_S^k, u_T^k)                       alignment
          + λ · CE(y, g(sg(u_T)))                            fits the head
          + r(e) · [β · CE(y, ḡ(u_S))
                    + γ · τ_h² · KL(σ(sg(g(u_T))/τ_h) ‖ σ(ḡ(u_S)/τ_h))]

    The head is fitted on the frozen teacher's uniformized vectors with the
    labels (`λ` term; only the head gets its gradient) while the student is
    trained to be read by that same head like the teacher is (`β`, `γ`
    terms; only the student gets their gradient). Logit KD is not part of
    this loss: add a `"kd"` term to the Distiller.

    Alternatives (see `docs/method.md`): `semantic="separate"` (teacher head
    fitted as above, a separate student head trained with the student on
    the `β`/`γ` terms), `semantic="none"` (alignment only);
    `head_scope="per_stage"` (one head per stage pair, terms averaged);
    `head_input="pooled"` (heads read globally average-pooled stage maps
    instead of `u`; with `"shared"` this needs equal channel counts).

    Reference: Guo et al., Visual Intelligence 1:6, 2023 (abstract only;
    every design choice here is this project's, not the paper's).

    Args:
        teacher_keys / student_keys: stage outputs paired element-wise
            (default `("stage1", "stage2", "stage3")`).
        mode / grid / temperature / groups: the uniformization (see
            `AttentionUniformization`; defaults `"spatial"`, 4, 0.1, 4).
        alignment: `D`: `"kl"` (default; rows of attention), `"mse"` or
            `"cosine"` (see `alignment_distance`). `"kl"` needs a mode with
            attention rows (`"spatial"`, `"grouped"`).
        alignment_weight: `α` (default 1.0); 0 disables the term.
        semantic: `"shared"` (default), `"separate"` or `"none"`.
        head_scope: `"joint"` (default, one head on all stages) or
            `"per_stage"`.
        head_input: `"uniformized"` (default) or `"pooled"`.
        num_classes: head outputs. `None`: read from the models' `"logits"`
            output in `check_specs` (the Distiller calls it); required when
            the loss is built by hand.
        head_hidden_units: hidden widths of the head (default `(256,)`).
        head_weight: `λ` (default 1.0).
        semantic_ce_weight: `β` (default 1.0).
        semantic_kd_weight: `γ` (default 1.0).
        head_temperature: `τ_h` (default 4.0).
        warmup_epochs: `E_w`, epochs over which the student-side guidance
            ramps from 0 to full weight (default 1: during the first epoch
            only the head learns); 0 gives full guidance from the start.
    """

    def __init__(
        self,
        teacher_keys=("stage1", "stage2", "stage3"),
        student_keys=None,
        mode="spatial",
        grid=4,
        temperature=0.1,
        groups=4,
        alignment="kl",
        alignment_weight=1.0,
        semantic="shared",
        head_scope="joint",
        head_input="uniformized",
        num_classes=None,
        head_hidden_units=(256,),
        head_weight=1.0,
        semantic_ce_weight=1.0,
        semantic_kd_weight=1.0,
        head_temperature=4.0,
        warmup_epochs=1,
        **kwargs,
    ):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        self.uniformization = AttentionUniformization(
            mode=mode, grid=grid, temperature=temperature, groups=groups,
            name="uniformization",
        )
        self.mode = self.uniformization.mode
        self.grid = self.uniformization.grid
        self.temperature = self.uniformization.temperature
        self.groups = self.uniformization.groups
        self.alignment = _check_choice("alignment", alignment, ALIGNMENTS)
        if alignment == "kl" and self.uniformization.output_rows is None:
            raise ValueError(
                "alignment='kl' compares attention rows, which "
                f"mode={mode!r} does not produce; use alignment='mse' or "
                f"'cosine'. Received: mode={mode!r}, alignment={alignment!r}"
            )
        self.alignment_weight = _check_weight(
            "alignment_weight", alignment_weight
        )
        self.semantic = _check_choice("semantic", semantic, SEMANTICS)
        self.head_scope = _check_choice("head_scope", head_scope, HEAD_SCOPES)
        self.head_input = _check_choice("head_input", head_input, HEAD_INPUTS)
        if num_classes is not None and (
            not isinstance(num_classes, numbers.Integral)
            or isinstance(num_classes, bool) or num_classes < 1
        ):
            raise ValueError(
                "num_classes must be a positive integer or None. "
                f"Received: num_classes={num_classes!r}"
            )
        self.num_classes = None if num_classes is None else int(num_classes)
        units = head_hidden_units
        if isinstance(units, numbers.Integral):
            units = (units,)
        try:
            units = tuple(int(u) for u in units)
        except (TypeError, ValueError):
            units = None
        if units is None or any(u < 1 for u in units):
            raise ValueError(
                "head_hidden_units must be a sequence of positive integers. "
                f"Received: head_hidden_units={head_hidden_units!r}"
            )
        self.head_hidden_units = units
        self.head_weight = _check_weight("head_weight", head_weight)
        self.semantic_ce_weight = _check_weight(
            "semantic_ce_weight", semantic_ce_weight
        )
        self.semantic_kd_weight = _check_weight(
            "semantic_kd_weight", semantic_kd_weight
        )
        try:
            head_temperature = float(head_temperature)
        except (TypeError, ValueError):
            head_temperature = float("nan")
        if not head_temperature > 0 or math.isinf(head_temperature):
            raise ValueError(
                "head_temperature must be a finite number > 0. "
                f"Received: head_temperature={head_temperature!r}"
            )
        self.head_temperature = head_temperature
        if (not isinstance(warmup_epochs, numbers.Integral)
                or isinstance(warmup_epochs, bool) or warmup_epochs < 0):
            raise ValueError(
                "warmup_epochs must be an integer >= 0. "
                f"Received: warmup_epochs={warmup_epochs!r}"
            )
        self.warmup_epochs = int(warmup_epochs)
        self.heads = []
        self.student_heads = []

    # -- validation and building ------------------------------------------
    def check_specs(self, teacher_shapes, student_shapes):
        super().check_specs(teacher_shapes, student_shapes)
        for side, keys, shapes in (
            ("teacher", self.teacher_keys, teacher_shapes),
            ("student", self.student_keys, student_shapes),
        ):
            for key in keys:
                self.uniformization.check_input_shape(
                    shapes[key], what=f"{side} output {key!r}"
                )
        if self.semantic == "shared" and self.head_input == "pooled":
            for tk, sk in zip(self.teacher_keys, self.student_keys):
                ct, cs = teacher_shapes[tk][-1], student_shapes[sk][-1]
                if ct != cs:
                    raise ValueError(
                        "semantic='shared' with head_input='pooled' feeds "
                        "pooled teacher and student stage features to one "
                        "head, so their channel counts must match; use "
                        "head_input='uniformized' or semantic='separate'. "
                        f"Received: teacher {tk!r} has {ct} channels, "
                        f"student {sk!r} has {cs}"
                    )
        if self.semantic != "none" and self.num_classes is None:
            logits = teacher_shapes.get("logits")
            if logits is None:
                raise ValueError(
                    "SAKD's semantic head needs num_classes, and the "
                    "teacher has no 'logits' output to read it from. Pass "
                    "num_classes=... . Available teacher outputs: "
                    f"{sorted(teacher_shapes)}"
                )
            self.num_classes = int(logits[-1])

    def _head_groups(self):
        if self.head_scope == "joint":
            return [list(range(len(self.teacher_keys)))]
        return [[k] for k in range(len(self.teacher_keys))]

    def _input_dims(self, keys, shapes):
        if self.head_input == "pooled":
            return [int(shapes[k][-1]) for k in keys]
        return [self.uniformization.output_length for _ in keys]

    def build_from_specs(self, teacher_shapes, student_shapes):
        for side, keys, shapes in (
            ("teacher", self.teacher_keys, teacher_shapes),
            ("student", self.student_keys, student_shapes),
        ):
            for key in keys:
                self.uniformization.check_input_shape(
                    shapes[key], what=f"{side} output {key!r}"
                )
        self.current_epoch = self.add_weight(
            shape=(), initializer="zeros", trainable=False,
            name="current_epoch",
        )
        if self.semantic != "none":
            if self.num_classes is None:
                raise ValueError(
                    "SAKD's semantic head needs num_classes: pass it, or "
                    "let the Distiller call check_specs first. Received: "
                    "num_classes=None"
                )
            t_dims = self._input_dims(self.teacher_keys, teacher_shapes)
            s_dims = self._input_dims(self.student_keys, student_shapes)
            heads, student_heads = [], []
            for i, group in enumerate(self._head_groups()):
                suffix = "" if self.head_scope == "joint" else f"_{i + 1}"
                prefix = (f"{self.name}_head" if self.semantic == "shared"
                          else f"{self.name}_teacher_head")
                head = SemanticHead(
                    self.num_classes, hidden_units=self.head_hidden_units,
                    name=f"{prefix}{suffix}",
                )
                head.build((None, sum(t_dims[k] for k in group)))
                heads.append(head)
                if self.semantic == "separate":
                    student_head = SemanticHead(
                        self.num_classes,
                        hidden_units=self.head_hidden_units,
                        name=f"{self.name}_student_head{suffix}",
                    )
                    student_head.build((None, sum(s_dims[k] for k in group)))
                    student_heads.append(student_head)
            self.heads = heads
            self.student_heads = student_heads
        self.built = True

    def set_epoch(self, epoch):
        if self.built and hasattr(self, "current_epoch"):
            self.current_epoch.assign(float(epoch))

    # -- computation -------------------------------------------------------
    def _uniformize(self, features, log_space):
        out = self.uniformization(features, log_space=log_space)
        return (ops.exp(out), out) if log_space else (out, None)

    def compute_terms(self, teacher, student, labels=None, training=False,
                      indices=None):
        """Returns the weighted per-example terms, `{name: (batch,)}`.

        Keys: `"alignment"` (`α` term), `"head"` (`λ`, fits the head) and
        `"guidance"` (`r(e)·(β, γ)` terms); present only when enabled.
        Their sum is `compute(...)`.
        """
        if len(teacher) != len(self.teacher_keys) or len(student) != len(
            self.student_keys
        ):
            raise ValueError(
                f"SAKD expects {len(self.teacher_keys)} teacher and "
                f"{len(self.student_keys)} student tensors. Received: "
                f"{len(teacher)} and {len(student)}"
            )
        teacher = [ops.stop_gradient(ops.cast(t, "float32")) for t in teacher]
        use_semantic = self.semantic != "none" and (
            self.head_weight or self.semantic_ce_weight
            or self.semantic_kd_weight
        )
        if use_semantic and not self.heads:
            raise ValueError(
                f"SAKD with semantic={self.semantic!r} owns a semantic head, "
                "created by build_from_specs(teacher_shapes, "
                "student_shapes) (the Distiller calls it). Received: a call "
                "before build_from_specs"
            )
        if use_semantic and labels is None:
            raise ValueError(
                f"SAKD with semantic={self.semantic!r} needs the labels. "
                "Received: labels=None"
            )
        log_space = self.alignment == "kl" and self.alignment_weight > 0
        need_u = self.alignment_weight > 0 or (
            use_semantic and self.head_input == "uniformized"
        )
        u_t, u_s, log_t, log_s = [], [], [], []
        if need_u:
            for f_t, f_s in zip(teacher, student):
                ut, lt = self._uniformize(f_t, log_space)
                us, ls = self._uniformize(f_s, log_space)
                u_t.append(ut)
                u_s.append(us)
                log_t.append(lt)
                log_s.append(ls)
        terms = {}
        if self.alignment_weight > 0:
            rows = self.uniformization.output_rows or 1
            a_t, a_s = (log_t, log_s) if log_space else (u_t, u_s)
            dist = [
                alignment_distance(t, s, self.alignment, rows)
                for t, s in zip(a_t, a_s)
            ]
            terms["alignment"] = self.alignment_weight * ops.mean(
                ops.stack(dist, axis=0), axis=0
            )
        if use_semantic:
            if self.head_input == "pooled":
                x_t = [ops.mean(t, axis=(1, 2)) for t in teacher]
                x_s = [ops.mean(ops.cast(s, "float32"), axis=(1, 2))
                       for s in student]
            else:
                x_t, x_s = u_t, u_s
            head_terms, guide_terms = [], []
            for i, group in enumerate(self._head_groups()):
                in_t = ops.concatenate([x_t[k] for k in group], axis=-1)
                in_s = ops.concatenate([x_s[k] for k in group], axis=-1)
                head = self.heads[i]
                t_logits = head(in_t)
                head_terms.append(ops.sparse_categorical_crossentropy(
                    labels, t_logits, from_logits=True
                ))
                if self.semantic == "shared":
                    s_logits = head(in_s, detach_weights=True)
                else:
                    s_logits = self.student_heads[i](in_s)
                guide_terms.append(semantic_guidance(
                    ops.stop_gradient(t_logits), s_logits, labels,
                    temperature=self.head_temperature,
                    ce_weight=self.semantic_ce_weight,
                    kd_weight=self.semantic_kd_weight,
                ))
            if self.head_weight:
                terms["head"] = self.head_weight * ops.mean(
                    ops.stack(head_terms, axis=0), axis=0
                )
            if self.semantic_ce_weight or self.semantic_kd_weight:
                guidance = ops.mean(ops.stack(guide_terms, axis=0), axis=0)
                if self.warmup_epochs > 0:
                    ramp = ops.minimum(
                        ops.convert_to_tensor(self.current_epoch)
                        / float(self.warmup_epochs),
                        1.0,
                    )
                    guidance = ramp * guidance
                terms["guidance"] = guidance
        if not terms:
            ref = student[0]
            terms["alignment"] = ops.zeros_like(
                ops.cast(ref[:, 0, 0, 0], "float32")
            )
        return terms

    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        terms = self.compute_terms(teacher, student, labels=labels,
                                   training=training, indices=indices)
        total = None
        for value in terms.values():
            total = value if total is None else total + value
        return total

    # -- serialization -----------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "grid": list(self.grid),
                "temperature": self.temperature,
                "groups": self.groups,
                "alignment": self.alignment,
                "alignment_weight": self.alignment_weight,
                "semantic": self.semantic,
                "head_scope": self.head_scope,
                "head_input": self.head_input,
                "num_classes": self.num_classes,
                "head_hidden_units": list(self.head_hidden_units),
                "head_weight": self.head_weight,
                "semantic_ce_weight": self.semantic_ce_weight,
                "semantic_kd_weight": self.semantic_kd_weight,
                "head_temperature": self.head_temperature,
                "warmup_epochs": self.warmup_epochs,
            }
        )
        return config
