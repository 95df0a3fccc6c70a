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

import keras
from keras import ops

from keras_semkd.layers.semantic_head import SemanticHead
from keras_semkd.layers.uniformization import AttentionUniformization
from keras_semkd.losses.base import DistillationLoss
from keras_semkd.losses.base import register_loss
from keras_semkd.utils.numerics import adaptive_average_pool
from keras_semkd.utils.numerics import kd_loss

ALIGNMENTS = ("kl", "mse", "cosine")
SEMANTICS = ("shared", "separate", "teacher", "none")
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


def _check_int(name, value, minimum):
    if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
            or value < minimum):
        raise ValueError(
            f"{name} must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def pair_grid(teacher_shape, student_shape, max_grid):
    """The `"smaller"` grid of a stage pair: the smaller of the two maps'
    heights and widths, each capped at `max_grid`."""
    h = min(int(teacher_shape[1]), int(student_shape[1]), max_grid)
    w = min(int(teacher_shape[2]), int(student_shape[2]), max_grid)
    return (h, w)


def pooled_features(x, grid):
    """Adaptive-average-pools `(B, H, W, C)` to `grid` and flattens to
    `(B, g_h·g_w·C)` (grid 1: global average pooling)."""
    x = ops.cast(x, "float32")
    if grid == (1, 1):
        return ops.mean(x, axis=(1, 2))
    x = adaptive_average_pool(x, grid)
    return ops.reshape(x, (-1, grid[0] * grid[1] * x.shape[-1]))


class _Apply(keras.layers.Layer):
    """Wraps a function of tensors as a layer (the prefit model only; never
    saved)."""

    def __init__(self, fn, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.fn = fn

    def call(self, inputs):
        return self.fn(inputs)


@register_loss("sakd")
class SAKDLoss(DistillationLoss):
    """Semantic-aware KD with parameter-free feature uniformization.

    For every stage pair `k` (teacher key `k` ↔ student key `k`, any
    shapes), `U_k` = `AttentionUniformization` (one op, no weights, applied
    to both networks of the pair) gives `u_T^k = U_k(f_T^k)` and
    `u_S^k = U_k(f_S^k)` of the same length. With `g_i` the frozen or
    co-trained teacher-side semantic branch(es), `h_i` the student-side
    branch (`semantic="separate"`) or `ḡ_i` the teacher's branch read with
    stop-gradient weights (`semantic="shared"`), the per-example loss is

        L = α · a(e) · 1/K Σ_k c_k · D(u_S^k, u_T^k)             alignment
          + λ · 1/I Σ_i CE(y, g_i(x_T^i))      (co-trained branches only)
          + r(e) · 1/I Σ_i [β · CE(y, h_i(x_S^i))
                          + γ · τ_h² · KL(σ(g_i(x_T^i)/τ_h) ‖ σ(h_i(x_S^i)/τ_h))]

    where `x^i` is what branch `i` reads (`head_input`: the uniformized
    vectors, or the stage maps pooled to `pool_grid`; `head_scope`: one
    branch on all stages or one per stage), `c_k = 1` or, with
    `confidence_weighting`, the teacher branch's probability of the true
    class divided by its mean over the prefit data, `r(e)` the warm-up and
    `a(e) = [e < E_a]` the alignment's epoch window (`alignment_epochs`;
    1 in every epoch by default).

    **Prefit** (`prefit_steps > 0`): before the first training step the
    teacher branches are fitted on the frozen teacher with their own Adam
    optimizer for `prefit_steps` batches of the training data, then frozen
    (non-trainable): the `λ` term is gone, and the branches are a fixed,
    label-supervised metric. Without prefit they are co-trained by the
    `λ` term (the student-side terms never reach them).

    The design is this project's (the paper's abstract is all that is
    public); `docs/method.md` gives the choices, the alternatives and the
    screening numbers. Logit KD is not part of this loss: add a `"kd"` term.

    **Defaults** are the design chosen on validation (docs/method.md §3,
    "v2"): each stage pair aligned on its own grid (the smaller map's,
    capped at 8x8) with map-normalized tokens; per-stage twin branches on
    the stage maps pooled to 4x4, the teacher's prefitted for 1000 batches
    and frozen, the student's trained with `β = γ = 0.1`; no warm-up. The
    first design (v1: one 4x4 grid, per-position cosine tokens, one
    co-trained head on the uniformized vectors, `β = γ = 1`, a 1-epoch
    warm-up) is `keras_semkd.configs.recipes.SAKD_V1`.

    With the default prefit, train through `Distiller.fit` (which prefits
    first) or call `Distiller.prefit_terms(x, y)` before
    `train_on_batch`; the Distiller refuses to train on unfitted frozen
    branches.

    Args:
        teacher_keys / student_keys: stage outputs paired element-wise
            (default `("stage1", "stage2", "stage3")`).
        mode / temperature / groups / token_norm: the uniformization (see
            `AttentionUniformization`).
        grid: an int or `(g_h, g_w)` for one grid for every pair, or
            `"smaller"`: per pair, the smaller of the two maps' sizes, at
            most `max_grid` (native resolution, only the larger map is
            pooled).
        max_grid: cap of `"smaller"` grids (default 8).
        alignment: `D`: `"kl"` (rows of attention), `"mse"` or `"cosine"`.
        alignment_weight: `α`; 0 disables the term.
        semantic: `"shared"`, `"separate"`, `"teacher"` (teacher branches
            only: they guide the student through `confidence_weighting`
            alone, with no branch terms on the student) or `"none"`.
        head_scope: `"joint"` or `"per_stage"`.
        head_input: `"uniformized"` or `"pooled"`.
        pool_grid: grid the stage maps are pooled to for
            `head_input="pooled"` (1: global average pooling).
        num_classes: branch outputs (`None`: read from the `"logits"`
            output in `check_specs`).
        head_hidden_units: hidden widths of every branch.
        head_weight: `λ` (co-trained branches only).
        semantic_ce_weight: `β`.
        semantic_kd_weight: `γ`.
        head_temperature: `τ_h`.
        warmup_epochs: `E_w` of `r(e) = min(1, e / E_w)`; 0: no warm-up.
        alignment_epochs: `E_a`: the alignment term is applied in epochs
            `e < E_a` (0-based, as the `Distiller` counts them) and is zero
            from epoch `E_a` on; 0: in every epoch.
        prefit_steps: batches to fit the teacher branches on before
            training (0: co-trained instead).
        prefit_learning_rate: Adam learning rate of the prefit.
        confidence_weighting: weight each example's alignment by the
            teacher branch's confidence (needs a prefit).
    """

    def __init__(
        self,
        teacher_keys=("stage1", "stage2", "stage3"),
        student_keys=None,
        mode="spatial",
        grid="smaller",
        temperature=0.1,
        groups=4,
        token_norm="map",
        max_grid=8,
        alignment="kl",
        alignment_weight=1.0,
        semantic="separate",
        head_scope="per_stage",
        head_input="pooled",
        pool_grid=4,
        num_classes=None,
        head_hidden_units=(256,),
        head_weight=1.0,
        semantic_ce_weight=0.1,
        semantic_kd_weight=0.1,
        head_temperature=4.0,
        warmup_epochs=0,
        alignment_epochs=0,
        prefit_steps=1000,
        prefit_learning_rate=1e-3,
        confidence_weighting=False,
        **kwargs,
    ):
        super().__init__(teacher_keys=teacher_keys,
                         student_keys=student_keys, **kwargs)
        self.max_grid = _check_int("max_grid", max_grid, 1)
        self.per_pair_grid = isinstance(grid, str)
        if self.per_pair_grid and grid != "smaller":
            raise ValueError(
                "grid must be a positive integer, a pair of them or "
                f"'smaller'. Received: grid={grid!r}"
            )
        # The template op; with grid="smaller" each pair gets its own copy
        # at its grid in build_from_specs.
        self.uniformization = AttentionUniformization(
            mode=mode, grid=self.max_grid if self.per_pair_grid else grid,
            temperature=temperature, groups=groups, token_norm=token_norm,
            name="uniformization",
        )
        self.uniformizations = [self.uniformization] * len(self.teacher_keys)
        self.mode = self.uniformization.mode
        self.grid = "smaller" if self.per_pair_grid else \
            self.uniformization.grid
        self.temperature = self.uniformization.temperature
        self.groups = self.uniformization.groups
        self.token_norm = self.uniformization.token_norm
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
        try:
            self.pool_grid = tuple(
                int(g) for g in ((pool_grid, pool_grid)
                                 if isinstance(pool_grid, numbers.Integral)
                                 else pool_grid))
        except (TypeError, ValueError):
            self.pool_grid = ()
        if len(self.pool_grid) != 2 or min(self.pool_grid) < 1:
            raise ValueError(
                "pool_grid must be a positive integer or a pair of them. "
                f"Received: pool_grid={pool_grid!r}"
            )
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
        self.alignment_epochs = _check_int("alignment_epochs",
                                           alignment_epochs, 0)
        self.prefit_steps = _check_int("prefit_steps", prefit_steps, 0)
        try:
            prefit_learning_rate = float(prefit_learning_rate)
        except (TypeError, ValueError):
            prefit_learning_rate = float("nan")
        if not prefit_learning_rate > 0 or math.isinf(prefit_learning_rate):
            raise ValueError(
                "prefit_learning_rate must be a finite number > 0. "
                f"Received: prefit_learning_rate={prefit_learning_rate!r}"
            )
        self.prefit_learning_rate = prefit_learning_rate
        self.confidence_weighting = bool(confidence_weighting)
        if self.semantic == "teacher" and not (
                self.prefit_steps and self.confidence_weighting):
            raise ValueError(
                "semantic='teacher' keeps only the teacher branches, which "
                "guide the student through the confidence weighting of the "
                "alignment: it needs prefit_steps > 0 and "
                "confidence_weighting=True. Received: "
                f"prefit_steps={prefit_steps!r}, "
                f"confidence_weighting={confidence_weighting!r}"
            )
        if self.confidence_weighting and not (
                self.prefit_steps and self.semantic != "none"):
            raise ValueError(
                "confidence_weighting weights the alignment by a prefitted "
                "teacher branch: it needs semantic != 'none' and "
                "prefit_steps > 0. Received: "
                f"semantic={semantic!r}, prefit_steps={prefit_steps!r}"
            )
        self.heads = []
        self.student_heads = []

    @property
    def frozen_branches(self):
        """Whether the teacher branches are prefitted and frozen."""
        return self.semantic != "none" and self.prefit_steps > 0

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
            cells = self.pool_grid[0] * self.pool_grid[1]
            return [cells * int(shapes[k][-1]) for k in keys]
        return [u.output_length for u in self.uniformizations]

    def _new_head(self, name, trainable=True):
        head = SemanticHead(self.num_classes,
                            hidden_units=self.head_hidden_units, name=name)
        head.trainable = trainable
        return head

    def build_from_specs(self, teacher_shapes, student_shapes):
        for side, keys, shapes in (
            ("teacher", self.teacher_keys, teacher_shapes),
            ("student", self.student_keys, student_shapes),
        ):
            for key in keys:
                self.uniformization.check_input_shape(
                    shapes[key], what=f"{side} output {key!r}"
                )
        if self.per_pair_grid:
            self.uniformizations = [
                AttentionUniformization(
                    mode=self.mode, temperature=self.temperature,
                    groups=self.groups, token_norm=self.token_norm,
                    grid=pair_grid(teacher_shapes[tk], student_shapes[sk],
                                   self.max_grid),
                    name=f"uniformization_{i + 1}",
                )
                for i, (tk, sk) in enumerate(
                    zip(self.teacher_keys, self.student_keys))
            ]
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
                head = self._new_head(f"{prefix}{suffix}",
                                      trainable=not self.frozen_branches)
                head.build((None, sum(t_dims[k] for k in group)))
                heads.append(head)
                if self.semantic == "separate":
                    student_head = self._new_head(
                        f"{self.name}_student_head{suffix}")
                    student_head.build((None, sum(s_dims[k] for k in group)))
                    student_heads.append(student_head)
            self.heads = heads
            self.student_heads = student_heads
            if self.frozen_branches:
                self.prefitted = self.add_weight(
                    shape=(), initializer="zeros", trainable=False,
                    name="prefitted",
                )
                self.confidence_scale = self.add_weight(
                    shape=(len(heads),), initializer="ones",
                    trainable=False, name="confidence_scale",
                )
        self.built = True

    def set_epoch(self, epoch):
        if self.built and hasattr(self, "current_epoch"):
            self.current_epoch.assign(float(epoch))

    # -- prefit of the teacher branches -------------------------------------
    def is_prefitted(self):
        if not self.frozen_branches:
            return True
        return float(ops.convert_to_numpy(self.prefitted)) > 0.5

    def needs_prefit(self):
        """Frozen branches not prefitted yet (built terms only)."""
        return (self.frozen_branches and self.built
                and not self.is_prefitted())

    def prefit(self, teacher, x, y=None, batch_size=None, verbose=1,
               steps=None):
        """Fits the teacher branches on the frozen `teacher`, then freezes
        them (see the class docstring). Called by `Distiller.fit` before
        the first step; a no-op when already done (also after a resume)
        or when the branches are co-trained.

        Args:
            teacher: the frozen teacher model.
            x: the training data as `fit` takes it: a `tf.data.Dataset`
                of `(images, labels)` (labels may be a dict with
                `"label"`), or an image array with `y`.
            y: labels when `x` is an array.
            batch_size: batch size when `x` is an array (default 64).
            verbose: Keras progress bar of the prefit.
            steps: batches to fit (default `prefit_steps`); fewer only
                make sense where the branches' quality does not matter
                (tests, step timing).
        """
        if self.is_prefitted():
            return None
        if not self.heads:
            raise ValueError(
                "SAKD's prefit needs the branches created by "
                "build_from_specs (the Distiller calls it first).")
        inputs = keras.Input(tuple(teacher.input_shape[1:]))
        outputs = teacher(inputs, training=False)
        features = [outputs[k] for k in self.teacher_keys]
        head_inputs = _Apply(
            lambda f: self._branch_inputs([ops.cast(t, "float32")
                                           for t in f]),
            name="branch_inputs")(features)
        if not isinstance(head_inputs, (list, tuple)):
            head_inputs = [head_inputs]
        trainers, logits = [], []
        for i, group in enumerate(self._head_groups()):
            trainer = self._new_head(f"prefit_branch_{i + 1}")
            inp = (head_inputs[group[0]] if len(group) == 1 else
                   keras.layers.Concatenate(axis=-1, dtype="float32")(
                       [head_inputs[k] for k in group]))
            logits.append(trainer(inp))
            trainers.append(trainer)
        model = keras.Model(inputs, logits, name=f"{self.name}_prefit")
        model.compile(
            optimizer=keras.optimizers.Adam(self.prefit_learning_rate),
            loss=[keras.losses.SparseCategoricalCrossentropy(
                from_logits=True)] * len(logits),
        )
        steps = self.prefit_steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(
                f"prefit steps must be >= 1. Received: steps={steps!r}")
        data, fit_kwargs = _prefit_data(x, y, batch_size, steps, len(logits))
        if isinstance(data, tuple):
            model.fit(*data, verbose=verbose, **fit_kwargs)
        else:
            model.fit(data, verbose=verbose, **fit_kwargs)
        for frozen, trained in zip(self.heads, trainers):
            frozen.set_weights(trained.get_weights())
        self.confidence_scale.assign(
            _mean_confidence(model, data, len(logits)))
        self.prefitted.assign(1.0)
        return model

    def _branch_inputs(self, teacher_side):
        """What the teacher branches read, per stage."""
        if self.head_input == "pooled":
            return [pooled_features(f, self.pool_grid) for f in teacher_side]
        return [u(f) for u, f in zip(self.uniformizations, teacher_side)]

    # -- computation -------------------------------------------------------
    def compute_terms(self, teacher, student, labels=None, training=False,
                      indices=None):
        """Returns the weighted per-example terms, `{name: (batch,)}`.

        Keys: `"alignment"` (`α` term), `"head"` (`λ`, co-trained branches
        only) and `"guidance"` (`r(e)·(β, γ)` terms); present only when
        enabled. Their sum is `compute(...)`.
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
        student = [ops.cast(s, "float32") for s in student]
        use_semantic = self.semantic != "none" and (
            self.head_weight or self.semantic_ce_weight
            or self.semantic_kd_weight or self.confidence_weighting
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
            for uni, f_t, f_s in zip(self.uniformizations, teacher, student):
                out_t = uni(f_t, log_space=log_space)
                out_s = uni(f_s, log_space=log_space)
                if log_space:
                    log_t.append(out_t)
                    log_s.append(out_s)
                    out_t, out_s = ops.exp(out_t), ops.exp(out_s)
                u_t.append(out_t)
                u_s.append(out_s)
        terms = {}
        confidence = None
        if use_semantic:
            if self.head_input == "pooled":
                x_t = [pooled_features(t, self.pool_grid) for t in teacher]
                x_s = [pooled_features(s, self.pool_grid) for s in student]
            else:
                x_t, x_s = u_t, u_s
            head_terms, guide_terms, confidence = [], [], []
            labels_i = ops.cast(labels, "int32")
            for i, group in enumerate(self._head_groups()):
                in_t = ops.concatenate([x_t[k] for k in group], axis=-1)
                in_s = ops.concatenate([x_s[k] for k in group], axis=-1)
                head = self.heads[i]
                t_logits = head(in_t)
                if not self.frozen_branches:
                    head_terms.append(ops.sparse_categorical_crossentropy(
                        labels, t_logits, from_logits=True
                    ))
                if self.semantic == "teacher":
                    s_logits = None
                elif self.semantic == "shared":
                    # Frozen branches are non-trainable already; co-trained
                    # ones must not be pulled toward the student.
                    s_logits = head(in_s, detach_weights=True)
                else:
                    s_logits = self.student_heads[i](in_s)
                if s_logits is not None:
                    guide_terms.append(semantic_guidance(
                        ops.stop_gradient(t_logits), s_logits, labels,
                        temperature=self.head_temperature,
                        ce_weight=self.semantic_ce_weight,
                        kd_weight=self.semantic_kd_weight,
                    ))
                if self.confidence_weighting:
                    probs = ops.softmax(ops.stop_gradient(t_logits), axis=-1)
                    p_true = ops.take_along_axis(
                        probs, ops.expand_dims(labels_i, -1), axis=-1)[:, 0]
                    confidence.append(p_true / ops.maximum(
                        ops.convert_to_tensor(self.confidence_scale)[i],
                        1e-6))
            if head_terms and self.head_weight:
                terms["head"] = self.head_weight * ops.mean(
                    ops.stack(head_terms, axis=0), axis=0
                )
            if guide_terms and (self.semantic_ce_weight
                                or self.semantic_kd_weight):
                guidance = ops.mean(ops.stack(guide_terms, axis=0), axis=0)
                if self.warmup_epochs > 0:
                    ramp = ops.minimum(
                        ops.convert_to_tensor(self.current_epoch)
                        / float(self.warmup_epochs),
                        1.0,
                    )
                    guidance = ramp * guidance
                terms["guidance"] = guidance
        if self.alignment_weight > 0:
            a_t, a_s = (log_t, log_s) if log_space else (u_t, u_s)
            dist = []
            for k, (uni, t, s) in enumerate(
                    zip(self.uniformizations, a_t, a_s)):
                d = alignment_distance(t, s, self.alignment,
                                       uni.output_rows or 1)
                if self.confidence_weighting:
                    group = [i for i, g in enumerate(self._head_groups())
                             if k in g][0]
                    d = d * confidence[group]
                dist.append(d)
            alignment = self.alignment_weight * ops.mean(
                ops.stack(dist, axis=0), axis=0
            )
            if self.alignment_epochs > 0:
                alignment = alignment * ops.cast(
                    ops.convert_to_tensor(self.current_epoch)
                    < float(self.alignment_epochs), alignment.dtype)
            terms["alignment"] = alignment
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
                "grid": self.grid if self.per_pair_grid else list(self.grid),
                "max_grid": self.max_grid,
                "temperature": self.temperature,
                "groups": self.groups,
                "token_norm": self.token_norm,
                "alignment": self.alignment,
                "alignment_weight": self.alignment_weight,
                "semantic": self.semantic,
                "head_scope": self.head_scope,
                "head_input": self.head_input,
                "pool_grid": list(self.pool_grid),
                "num_classes": self.num_classes,
                "head_hidden_units": list(self.head_hidden_units),
                "head_weight": self.head_weight,
                "semantic_ce_weight": self.semantic_ce_weight,
                "semantic_kd_weight": self.semantic_kd_weight,
                "head_temperature": self.head_temperature,
                "warmup_epochs": self.warmup_epochs,
                "alignment_epochs": self.alignment_epochs,
                "prefit_steps": self.prefit_steps,
                "prefit_learning_rate": self.prefit_learning_rate,
                "confidence_weighting": self.confidence_weighting,
            }
        )
        return config


def _prefit_data(x, y, batch_size, steps, outputs):
    """The prefit's `fit` input: `steps` batches of `(images, labels)`."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - JAX-only installs
        tf = None
    if tf is not None and isinstance(x, tf.data.Dataset):
        def labels_only(images, targets, *rest):
            if isinstance(targets, dict):
                targets = targets["label"]
            return images, tuple([targets] * outputs)

        return (x.map(labels_only).repeat(),
                {"epochs": 1, "steps_per_epoch": steps})
    if isinstance(x, keras.utils.PyDataset):
        raise TypeError(
            "SAKD's prefit reads a tf.data.Dataset or arrays; call "
            "loss.prefit(teacher, dataset) yourself before fit for a "
            f"PyDataset. Received: {type(x).__name__}")
    if y is None:
        raise ValueError("SAKD's prefit needs labels: pass y with an image "
                         "array.")
    if isinstance(y, dict):
        y = y["label"]
    batch_size = int(batch_size or 64)
    n = len(x)
    per_epoch = max(1, -(-n // batch_size))
    epochs = max(1, -(-steps // per_epoch))
    return (x, [y] * outputs), {"epochs": epochs, "batch_size": batch_size,
                                "shuffle": True}


def _mean_confidence(model, data, outputs, batches=20):
    """Mean softmax probability of the true class of each branch over a
    few batches of the prefit data."""
    import numpy as np

    totals, count = np.zeros(outputs), 0
    if isinstance(data, tuple):
        images, labels = data[0], data[1][0]
        chunks = [(images[i:i + 256], labels[i:i + 256])
                  for i in range(0, min(len(images), 256 * batches), 256)]
    else:
        chunks = ((a, b[0]) for a, b in data.take(batches))
    for images, labels in chunks:
        logits = model.predict_on_batch(np.asarray(images))
        if outputs == 1 and not isinstance(logits, (list, tuple)):
            logits = [logits]
        labels = np.asarray(labels).reshape(-1).astype("int64")
        for i, z in enumerate(logits):
            z = np.asarray(z, dtype="float64")
            z = z - z.max(-1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
            totals[i] += p[np.arange(len(labels)), labels].sum()
        count += len(labels)
    return (totals / max(count, 1)).astype("float32")
