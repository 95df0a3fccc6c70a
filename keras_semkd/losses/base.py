"""The contract every distillation loss follows, and the loss registry.

A distillation loss is a `keras.layers.Layer` so that learned parts of a
method (FitNet's regressor, CRD's embeddings and memory bank, SAKD's
semantic head) are tracked, trained with the student, saved with the
distiller and never exported with the student.

A loss reads named outputs of the teacher and of the student (the keys of
the functional models' output dicts, e.g. `"logits"`, `"stage3"`) and
returns either one value per example (`reduction = "per_example"`, shape
`(batch,)`) or one value for the whole batch (`reduction = "batch"`, a
scalar) for methods defined on relations inside a batch (SP, CC, RKD, ...).
The `Distiller` turns per-example values into a global-batch mean that is
correct under `tf.distribute` strategies, and divides batch-level values by
the number of replicas, so gradients never double with more replicas.

Losses run in float32 (`dtype="float32"` policy) even when the models use a
mixed precision policy: softmax, log-softmax and KL terms stay in float32.
"""

import keras

from keras_semkd.registry import Registry
from keras_semkd.utils.numerics import check_warmup_epochs
from keras_semkd.utils.numerics import linear_warmup

LOSSES = Registry("distillation loss")

#: The default feature keys of the methods that pair stage maps (AT, NST,
#: VID): the three stages of the CIFAR ResNets/WRNs.
STAGE_KEYS = ("stage1", "stage2", "stage3")


def register_loss(name):
    """Decorator: registers a `DistillationLoss` subclass under `name` and
    as a Keras serializable (package `keras_semkd`)."""

    def _wrap(cls):
        cls = keras.saving.register_keras_serializable(package="keras_semkd")(
            cls
        )
        LOSSES.register(name, cls)
        cls.registered_name = name
        return cls

    return _wrap


def get(identifier, **kwargs):
    """Returns a distillation loss instance.

    Args:
        identifier: a registered name (e.g. `"kd"`), a config dict
            `{"name": "kd", **kwargs}` or a `DistillationLoss` instance.
        **kwargs: constructor arguments when `identifier` is a name.
    """
    if isinstance(identifier, DistillationLoss):
        if kwargs:
            raise ValueError(
                "Keyword arguments cannot be applied to an already built "
                f"loss instance. Received: identifier={identifier!r}, "
                f"kwargs={kwargs}"
            )
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        name = config.pop("name", None)
        if name is None:
            raise ValueError(
                "A loss config dict needs a 'name' entry. "
                f"Received: {identifier}"
            )
        config.update(kwargs)
        return LOSSES.get(name)(**config)
    if isinstance(identifier, str):
        return LOSSES.get(identifier)(**kwargs)
    raise TypeError(
        "A distillation loss is given by a registered name, a config dict "
        f"or a DistillationLoss instance. Received: {identifier!r}"
    )


class DistillationLoss(keras.layers.Layer):
    """Base class of all distillation losses.

    Subclasses set `reduction`, implement `compute(teacher, student, labels,
    training)` and, if they own weights, `build_from_specs(...)`.

    Args:
        teacher_keys: output keys of the teacher this loss reads, in order.
            A single string is accepted.
        student_keys: output keys of the student this loss reads, paired
            element-wise with `teacher_keys` (same length unless the
            subclass says otherwise).
        **kwargs: base `Layer` arguments (`name`, ...). The dtype policy is
            forced to float32.
    """

    reduction = "per_example"
    #: Subclasses that pair teacher/student keys one to one keep this True.
    paired_keys = True
    #: Subclasses that need each example's dataset index (CRD's memory
    #: bank) set this True; the data must then yield labels as a dict
    #: `{"label": ..., "index": ...}`.
    needs_indices = False
    #: Run-level values this loss takes from the run when its term does not
    #: set them, each a constructor argument of the same name:
    #: `"weight_decay"` (the protocol's coupled weight decay, for learned
    #: parts that RepDistiller's SGD decays with the student) and
    #: `"num_data"` (the training-set size, for memory banks). Declared,
    #: never guessed from the signature (`distillers.build.resolve_terms`).
    run_values = ()

    def __init__(self, teacher_keys=("logits",), student_keys=None, **kwargs):
        kwargs["dtype"] = "float32"
        if kwargs.get("name") is None and getattr(
            type(self), "registered_name", None
        ):
            kwargs["name"] = type(self).registered_name
        super().__init__(**kwargs)
        if isinstance(teacher_keys, str):
            teacher_keys = (teacher_keys,)
        if student_keys is None:
            student_keys = teacher_keys
        if isinstance(student_keys, str):
            student_keys = (student_keys,)
        self.teacher_keys = tuple(teacher_keys)
        self.student_keys = tuple(student_keys)
        if not self.teacher_keys or not self.student_keys:
            raise ValueError(
                f"{type(self).__name__} needs at least one teacher and one "
                f"student key. Received: teacher_keys={teacher_keys}, "
                f"student_keys={student_keys}"
            )
        if self.paired_keys and len(self.teacher_keys) != len(
            self.student_keys
        ):
            raise ValueError(
                f"{type(self).__name__} pairs teacher and student outputs "
                "one to one, so both key lists need the same length. "
                f"Received: teacher_keys={self.teacher_keys}, "
                f"student_keys={self.student_keys}"
            )
        if self.reduction not in ("per_example", "batch"):
            raise ValueError(
                f"reduction must be 'per_example' or 'batch'. "
                f"Received: reduction={self.reduction!r}"
            )

    # -- validation and building ------------------------------------------
    def check_specs(self, teacher_shapes, student_shapes):
        """Checks that the keys exist; raises `ValueError` listing the
        available keys otherwise. Shapes are dicts key -> shape tuple."""
        for side, keys, shapes in (
            ("teacher", self.teacher_keys, teacher_shapes),
            ("student", self.student_keys, student_shapes),
        ):
            missing = [k for k in keys if k not in shapes]
            if missing:
                raise ValueError(
                    f"Loss {self.name!r} ({type(self).__name__}) reads "
                    f"{side} output(s) {missing}, which the {side} model "
                    f"does not have. Available {side} outputs: "
                    f"{sorted(shapes)}. (With your own models, tap "
                    "features by layer name or with features='auto': "
                    "Distiller(..., features=...).)"
                )

    def build_from_specs(self, teacher_shapes, student_shapes):
        """Creates weights from the output shapes of teacher and student.

        `teacher_shapes`/`student_shapes` map each key in
        `teacher_keys`/`student_keys` to its shape (batch dim `None`).
        The default creates nothing. Subclasses that override it must call
        `self.built = True` (or `super().build_from_specs`).
        """
        self.built = True

    def build(self, input_shape=None):
        # Built explicitly through `build_from_specs`; a plain call on an
        # unbuilt parameter-free loss is fine.
        self.built = True

    # -- computation -------------------------------------------------------
    def compute(self, teacher, student, labels=None, training=False,
                indices=None):
        """Returns the loss: shape `(batch,)` when `reduction ==
        "per_example"`, a scalar when `reduction == "batch"`.

        Args:
            teacher: list of teacher tensors in `teacher_keys` order.
            student: list of student tensors in `student_keys` order.
            labels: integer class labels, shape `(batch,)`.
            training: whether this is a training step.
            indices: dataset indices of the examples, shape `(batch,)`,
                when the data provide them (see `needs_indices`).
        """
        raise NotImplementedError

    def call(self, teacher, student, labels=None, training=False,
             indices=None):
        return self.compute(
            list(teacher), list(student), labels=labels, training=training,
            indices=indices,
        )

    def prefit(self, teacher, x, y=None, batch_size=None, verbose=1,
               steps=None):
        """Called by `Distiller.fit` before training with the frozen
        teacher and the training data, for terms that fit parts of
        themselves on the teacher first (SAKD's frozen branches). Must be
        a no-op once done (the state lives in the term's variables, so a
        resumed run skips it). `steps` overrides the term's own number of
        batches (tests, timing). The default does nothing."""
        return None

    def needs_prefit(self):
        """Whether `prefit` has work left: training before it would use
        unfitted parts (the Distiller refuses to). The default: never."""
        return False

    def set_epoch(self, epoch):
        """Called by the `Distiller` at the start of every epoch (0-based).

        Losses with a warm-up (DKD, ReviewKD) keep the epoch in a
        non-trainable variable here; the default does nothing.
        """

    def compute_output_shape(self, *args, **kwargs):
        return () if self.reduction == "batch" else (None,)

    # -- serialization -----------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "teacher_keys": list(self.teacher_keys),
                "student_keys": list(self.student_keys),
            }
        )
        return config


class EpochWarmup:
    """Mixin of the losses with mdistiller's linear epoch warm-up (DKD,
    ReviewKD): the loss is scaled by `linear_warmup(epoch, warmup_epochs)`.

    The train step is compiled, so the epoch lives in a non-trainable
    float32 variable named `"epoch"`, which the `Distiller` sets through
    `set_epoch` at the start of every epoch. Call `init_warmup` in
    `__init__` (after `super().__init__`).
    """

    def init_warmup(self, warmup_epochs):
        self.warmup_epochs = check_warmup_epochs(warmup_epochs)
        self.epoch = self.add_weight(
            name="epoch", shape=(), initializer="zeros", trainable=False,
            dtype="float32",
        )

    def set_epoch(self, epoch):
        self.epoch.assign(float(epoch))

    def warmup_factor(self):
        """The current warm-up factor `min((epoch + 1) / warmup, 1)` (a
        float32 scalar tensor)."""
        return linear_warmup(self.epoch, self.warmup_epochs)


# ---------------------------------------------------------------------------
# Helpers of the loss classes (checks and building)
# ---------------------------------------------------------------------------


def check_feature_maps(loss, teacher_shapes, student_shapes):
    """Raises `ValueError` unless every key of `loss` is a 4-D
    `(batch, H, W, C)` feature map."""
    for side, keys, shapes in (
        ("teacher", loss.teacher_keys, teacher_shapes),
        ("student", loss.student_keys, student_shapes),
    ):
        for key in keys:
            shape = tuple(shapes[key])
            if len(shape) != 4 or any(d is None for d in shape[1:]):
                raise ValueError(
                    f"{type(loss).__name__} reads (batch, H, W, C) feature "
                    f"maps with static H, W, C. Received: {side} output "
                    f"{key!r} of shape {shape}"
                )


def pair_specs(loss, teacher_shapes, student_shapes):
    """The (teacher shape, student shape) of each key pair, batch dropped."""
    return tuple(
        (tuple(teacher_shapes[t][1:]), tuple(student_shapes[s][1:]))
        for t, s in zip(loss.teacher_keys, loss.student_keys)
    )


def build_pair_regressors(loss, teacher_shapes, student_shapes, make):
    """Builds `loss.regressors`, one learned layer a key pair (FitNet's
    `ConvReg`, VID's regressor), named under the loss; a no-op when they
    exist for the same shapes (raises for other shapes).

    Args:
        loss: the loss (its `check_specs` runs first).
        teacher_shapes, student_shapes: as `build_from_specs`.
        make: `make(i, teacher_shape, student_shape)` -> the built layer of
            pair `i` (shapes without the batch axis).
    """
    loss.check_specs(teacher_shapes, student_shapes)
    specs = pair_specs(loss, teacher_shapes, student_shapes)
    if already_built_for(loss, loss.regressors, specs):
        return
    regressors = []
    with keras.name_scope(loss.name):
        for i, (t_shape, s_shape) in enumerate(specs):
            regressors.append(make(i, t_shape, s_shape))
    loss.regressors = regressors
    loss._built_specs = specs
    loss.built = True


def already_built_for(loss, parts, specs):
    """True when `loss` already built its learned `parts` for `specs`;
    raises if it was built for another model pair."""
    if not parts:
        return False
    if specs != loss._built_specs:
        raise ValueError(
            f"Loss {loss.name!r} was built for {loss._built_specs} "
            f"and cannot be rebuilt for {specs}; create a new "
            "loss instance for another model pair."
        )
    return True
