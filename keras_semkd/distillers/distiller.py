"""The `Distiller`: a Keras model that trains a student against a frozen teacher.

The objective is data, not code::

    L = w_s · 1/B Σ_b ℓ(y_b, z_s,b)                  (student loss, compile())
      + Σ_i w_i · 1/B Σ_b L_i(t_b, s_b)            (per-example distill terms)
      + Σ_j w_j · L_j(T, S)                        (batch-level distill terms)
      + Σ regularization losses of the student

where each `L_i` is a registered `DistillationLoss` reading named outputs of
the teacher and of the student.  The trainer never special-cases a method by
name.

Distribution: per-example values are reduced to a mean over the *replica*
batch and then scaled by `1 / num_replicas_in_sync` (the same rule Keras uses
for its own losses), so the gradient summed over replicas equals the
gradient of the global-batch mean: one replica and two replicas give the same
update for the same global batch.  Batch-level terms (relations inside a
batch) are scaled the same way.
"""

import keras
from keras import ops

from keras_semkd.distillers import selectors
from keras_semkd.distillers import taps
from keras_semkd.losses import base as losses_base


def _backend_steps():
    """The module with the train/test steps of the running backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from keras_semkd.distillers import tf_steps

        return tf_steps
    if backend == "jax":
        from keras_semkd.distillers import jax_steps

        return jax_steps
    raise NotImplementedError(
        "Distiller supports the 'tensorflow' and 'jax' backends. "
        f"Received: backend={backend!r}"
    )


def _check_model(model, role):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"The {role} must be a keras.Model. "
            f"Received: {role}={model!r} of type {type(model).__name__}"
        )


def _student_loss_fn(loss):
    """Resolves the student loss into a per-example function."""
    if loss is None or loss in (
        "sparse_categorical_crossentropy",
        "SparseCategoricalCrossentropy",
    ):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    elif isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss, loss.call
    if callable(loss):
        return loss, loss
    raise TypeError(
        "The student loss must be a keras Loss, a callable or a name. "
        f"Received: loss={loss!r}"
    )


class _EpochToLosses(keras.callbacks.Callback):
    """Tells each distillation term the epoch (for warm-up schedules)."""

    def __init__(self, distiller):
        super().__init__()
        self._distiller = distiller

    def on_epoch_begin(self, epoch, logs=None):
        for term in self._distiller.distillation_terms:
            term.set_epoch(epoch)


@keras.saving.register_keras_serializable(package="keras_semkd")
class Distiller(keras.Model):
    """Distills a frozen teacher into a student.

    Any Keras models: functional (`keras.applications`, keras-hub),
    `keras.Sequential` or subclassed, returning logits or a dict of named
    outputs (the model zoo's `"logits"`, `"stage1"`, ...). The terms read
    named outputs; a model that does not return them is read through a
    *tapped view* (`keras_semkd.distillers.taps`) built once here: its
    logits (the pre-softmax tensor when the model ends in a softmax) plus
    the features declared in `features`, all from one forward pass.

    Args:
        teacher: trained `keras.Model`; frozen (`trainable = False`) and always
            run with `training=False`, outside the gradient computation.
        student: `keras.Model` to train.
        distillation_losses: the distillation terms, as data. Any of
            - a dict `{"kd": 0.9}` (name -> weight, default arguments),
            - a list of `{"name": "kd", "weight": 0.9, **loss_kwargs}`,
            - a list of `(loss, weight)` with `loss` a name, config dict or
              `DistillationLoss` instance.
            Keys may be selectors (`"@stages"`, `"@hint"`, ...), resolved
            against the outputs of the two (tapped) models.
        student_loss_weight: weight `w_s` of the student's own loss
            (RepDistiller's gamma).
        logits_key: the output key holding the logits in both models.
        features: the features to tap, by layer name: `None` (the models'
            own outputs), `"auto"` (both models: `"stage1"` ... `"stageN"`,
            the last layer of each spatial resolution, and `"embedding"`,
            the classifier's pooled input), or
            `{"teacher": spec, "student": spec}` with each spec `None`,
            `"auto"` or `{key: layer name}` (a layer of a nested backbone
            by its name or its path `"backbone/layer"`). The resolved layer
            paths are logged and kept in `get_config()["features"]`.
        input_shape: `(H, W, C)`, needed only when neither model knows its
            input shape (unbuilt Sequential or subclassed models).
        validate_terms: `True` (default): `evaluate` and `fit`'s
            validation run the teacher and every term, and log
            `val_distill/<name>`. `False`: they run the student alone
            (no teacher forward pass; `loss` is then the student loss),
            which is what held-out accuracy needs and costs one student
            forward per batch instead of teacher + student + terms.
        **kwargs: `keras.Model` arguments (`name`, ...).

    `compile()` keeps Keras' signature; its `loss` is the student loss on
    the student's logits (default: sparse categorical cross-entropy from
    logits) and its `metrics` are computed on the student's logits.

    Logged keys: `loss` (the full objective), `student_loss`,
    `distill/<term name>` for every term, and the compiled metrics.

    `teacher` and `student` stay the models given (save `distiller.student`
    to keep the trained student); `teacher_view` / `student_view` are what
    the steps run.
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses=None,
        student_loss_weight=1.0,
        logits_key="logits",
        features=None,
        input_shape=None,
        validate_terms=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.logits_key = logits_key
        self.validate_terms = bool(validate_terms)
        self.student_loss_weight = float(student_loss_weight)
        _check_model(teacher, "teacher")
        _check_model(student, "student")
        t_spec, s_spec = taps.split_features(features)
        t_in = taps.known_input_shape(teacher)
        s_in = taps.known_input_shape(student)
        if t_in is not None and s_in is not None and t_in != s_in:
            raise ValueError(
                "Teacher and student must take the same input shape. "
                f"Received: teacher input {t_in}, student input {s_in}."
            )
        if input_shape is not None:
            input_shape = tuple(int(d) for d in input_shape)
            for role, shape in (("teacher", t_in), ("student", s_in)):
                if shape is not None and shape != input_shape:
                    raise ValueError(
                        f"input_shape={input_shape} differs from the "
                        f"{role}'s input shape {shape}.")
        shape = input_shape or t_in or s_in
        self.input_shape_arg = input_shape
        # The views share the models' layers (and so their weights); they
        # are not tracked as sub-models, so saving sees only `teacher`,
        # `student` and the terms.
        t_view = taps.tapped_view(teacher, t_spec, role="teacher",
                                  logits_key=logits_key, input_shape=shape)
        s_view = taps.tapped_view(student, s_spec, role="student",
                                  logits_key=logits_key, input_shape=shape)
        object.__setattr__(self, "_views", {"teacher": t_view,
                                            "student": s_view})
        self.features = {"teacher": t_view.features,
                         "student": s_view.features}
        teacher_shapes = t_view.output_shapes
        student_shapes = s_view.output_shapes
        t_classes = teacher_shapes[logits_key][-1]
        s_classes = student_shapes[logits_key][-1]
        if t_classes != s_classes:
            raise ValueError(
                "Teacher and student must predict the same number of "
                f"classes. Received: teacher {teacher.name!r} has "
                f"{t_classes} classes, student {student.name!r} has "
                f"{s_classes}."
            )
        self.num_classes = int(s_classes)
        self.input_spec_shape = tuple(t_view.model.input_shape[1:])

        self.teacher = teacher
        self.teacher.trainable = False
        self.student = student

        terms, weights = self._parse_terms(
            distillation_losses, t_view.model, s_view.model)
        used = set()
        for term in terms:
            term.check_specs(teacher_shapes, student_shapes)
            if term.name in used:
                raise ValueError(
                    f"Two distillation terms are named {term.name!r}; give "
                    "them distinct `name`s so their logs stay apart."
                )
            used.add(term.name)
            term.build_from_specs(
                {k: teacher_shapes[k] for k in term.teacher_keys},
                {k: student_shapes[k] for k in term.student_keys},
            )
        self.distillation_terms = terms
        self.distillation_weights = weights

        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.term_trackers = [
            keras.metrics.Mean(name=f"distill/{t.name}") for t in terms
        ]
        self._student_loss, self._student_loss_call = _student_loss_fn(None)
        self.built = True

    @property
    def teacher_view(self):
        """The teacher as the steps run it: a model with dict outputs
        (the teacher itself when it returns them)."""
        return self._views["teacher"].model

    @property
    def student_view(self):
        """The student as the steps run it (shares the student's
        layers)."""
        return self._views["student"].model

    # -- declaration -------------------------------------------------------
    @staticmethod
    def _parse_terms(spec, teacher=None, student=None):
        if spec is None:
            return [], []
        items = []
        if isinstance(spec, dict):
            items = [(name, weight) for name, weight in spec.items()]
        elif isinstance(spec, (list, tuple)):
            for item in spec:
                if isinstance(item, dict):
                    config = dict(item)
                    if "weight" not in config:
                        raise ValueError(
                            "Each distillation term dict needs a 'weight'. "
                            f"Received: {item}"
                        )
                    weight = config.pop("weight")
                    if "loss" in config:
                        items.append((config["loss"], weight))
                    else:
                        items.append((config, weight))
                elif isinstance(item, (list, tuple)) and len(item) == 2:
                    items.append(tuple(item))
                else:
                    raise ValueError(
                        "A distillation term is a dict with 'name' and "
                        "'weight', or a (loss, weight) pair. "
                        f"Received: {item!r}"
                    )
        else:
            raise TypeError(
                "distillation_losses must be a dict name -> weight or a "
                f"list of terms. Received: {spec!r}"
            )
        terms, weights = [], []
        for loss, weight in items:
            if (isinstance(loss, dict) and "class_name" not in loss
                    and teacher is not None
                    and any(selectors.has_selector(loss.get(k))
                            for k in ("teacher_keys", "student_keys"))):
                loss = selectors.resolve_term(loss, teacher, student)
            if isinstance(loss, dict) and "class_name" in loss:
                term = keras.saving.deserialize_keras_object(loss)
            else:
                term = losses_base.get(loss)
            if not isinstance(term, losses_base.DistillationLoss):
                raise TypeError(
                    "Distillation terms must be DistillationLoss instances. "
                    f"Received: {term!r}"
                )
            try:
                weight = float(weight)
            except (TypeError, ValueError):
                raise ValueError(
                    f"The weight of term {term.name!r} must be a number. "
                    f"Received: weight={weight!r}"
                ) from None
            terms.append(term)
            weights.append(weight)
        return terms, weights

    # -- Keras model API ---------------------------------------------------
    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Standard `Model.compile`; `loss` is the student loss on logits."""
        self._student_loss, self._student_loss_call = _student_loss_fn(loss)
        self._student_loss_config = (
            None if loss is None else keras.saving.serialize_keras_object(loss)
        )
        super().compile(optimizer=optimizer, loss=None, metrics=metrics,
                        **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and getattr(self, "_student_loss_config", None):
            config["loss"] = self._student_loss_config
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, dict):
            y_pred = y_pred[self.logits_key]
        # Metrics in float32: top-k kernels reject bfloat16 logits.
        y_pred = ops.cast(y_pred, "float32")
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # -- the shared, backend-agnostic objective ----------------------------
    def compute_distillation_loss(
        self, teacher_outputs, student_outputs, y, sample_weight=None,
        training=False,
    ):
        """Returns `(loss, values)`.

        `loss` is the per-replica objective (global-batch mean on one
        replica); `values` maps `"student_loss"` and every
        `"distill/<name>"` to its batch value (before weighting).
        """
        logits = ops.cast(student_outputs[self.logits_key], "float32")
        y, indices = self._split_targets(y)
        ce = ops.cast(self._student_loss_call(y, logits), "float32")
        if sample_weight is not None:
            sw = ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
            ce = ce * sw
        else:
            sw = None
        values = {"student_loss": ops.mean(ce)}
        if teacher_outputs is None:
            # Student-only evaluation (`validate_terms=False`).
            if training:
                raise ValueError("Training needs the teacher's outputs.")
            return ops.mean(ce), values
        per_example = self.student_loss_weight * ce
        batch_total = 0.0
        for term, weight in zip(
            self.distillation_terms, self.distillation_weights
        ):
            t = [teacher_outputs[k] for k in term.teacher_keys]
            s = [student_outputs[k] for k in term.student_keys]
            if term.needs_indices and indices is None and not training:
                # Memory-bank terms (CRD) are defined over the training
                # set's indices; held-out data without them do not
                # evaluate the term (logged as 0).
                v = ops.zeros_like(ce) if term.reduction == "per_example" \
                    else ops.zeros(())
            else:
                v = term(t, s, labels=y, training=training, indices=indices)
            v = ops.cast(v, "float32")
            if term.reduction == "per_example":
                if sw is not None:
                    v = v * sw
                per_example = per_example + weight * v
                values[f"distill/{term.name}"] = ops.mean(v)
            else:
                batch_total = batch_total + weight * v
                values[f"distill/{term.name}"] = v
        loss = ops.mean(per_example) + batch_total
        reg = [ops.cast(r, "float32") for r in self.student.losses]
        for term in self.distillation_terms:
            reg.extend(ops.cast(r, "float32") for r in term.losses)
        if reg:
            loss = loss + ops.sum(ops.stack([ops.sum(r) for r in reg]))
        return loss, values

    def _split_targets(self, y):
        """Targets are labels, or a dict `{"label": ..., "index": ...}`."""
        indices = None
        if isinstance(y, dict):
            indices = y.get("index")
            y = y["label"]
        y = ops.convert_to_tensor(y)
        if len(y.shape) == 2 and y.shape[-1] == 1:
            y = ops.squeeze(y, axis=-1)
        return y, indices

    def _update_trackers(self, loss, values, x, y, logits, sample_weight):
        y, _ = self._split_targets(y)
        batch = ops.shape(y)[0]
        self._loss_tracker.update_state(loss, sample_weight=batch)
        self.student_loss_tracker.update_state(
            values["student_loss"], sample_weight=batch
        )
        for term, tracker in zip(self.distillation_terms, self.term_trackers):
            if f"distill/{term.name}" not in values:
                continue
            tracker.update_state(
                values[f"distill/{term.name}"], sample_weight=batch
            )
        return self.compute_metrics(x, y, logits, sample_weight)

    # -- steps: one module a backend (tf_steps.py, jax_steps.py) ----------
    def train_step(self, *args):
        return _backend_steps().train_step(self, *args)

    def test_step(self, *args):
        if keras.backend.backend() == "jax":
            logs, state = _backend_steps().test_step(self, *args)
            return self._test_logs(logs), state
        return self._test_logs(_backend_steps().test_step(self, *args))

    def _test_logs(self, logs):
        if self.validate_terms:
            return logs
        # The term trackers are not updated without the teacher: not logged.
        return {k: v for k, v in logs.items()
                if not k.startswith("distill/")}

    # -- input checks, before the first step -------------------------------
    def check_data(self, x, y=None, require_indices=True):
        """Raises `ValueError` when `x`/`y` cannot feed this distiller.

        Checks image shape against the models' input and, for arrays,
        labels against the number of classes. Called by `fit`/`evaluate`.
        """
        expected = self.input_spec_shape
        shape = None
        labels = None
        targets = y
        if x is None:
            return
        if hasattr(x, "element_spec"):  # tf.data.Dataset
            spec = x.element_spec
            first = spec[0] if isinstance(spec, (tuple, list)) else spec
            shape = tuple(first.shape[1:]) if first.shape.rank else None
            targets = spec[1] if isinstance(spec, (tuple, list)) else None
        elif isinstance(x, keras.utils.PyDataset):
            batch = x[0]
            first = batch[0] if isinstance(batch, (tuple, list)) else batch
            shape = tuple(first.shape[1:])
            if isinstance(batch, (tuple, list)) and len(batch) > 1:
                targets = batch[1]
        elif hasattr(x, "shape"):
            shape = tuple(x.shape[1:])
        if isinstance(targets, dict):
            labels = targets.get("label")
        else:
            labels = targets
        needs = [t.name for t in self.distillation_terms if t.needs_indices]
        has_index = isinstance(targets, dict) and "index" in targets
        if require_indices and needs and not has_index:
            raise ValueError(
                f"Distillation term(s) {needs} need each example's dataset "
                "index: the data must yield targets as a dict "
                "{'label': labels, 'index': indices} (e.g. "
                "keras_semkd.data.get_dataset(..., with_index=True))."
            )
        if not hasattr(labels, "shape") or hasattr(labels, "is_compatible_with"):
            labels = None  # symbolic spec: nothing to range-check
        if shape is not None and len(shape) == len(expected):
            for got, want in zip(shape, expected):
                if got is not None and want is not None and got != want:
                    raise ValueError(
                        "The data do not fit the models: images have shape "
                        f"{shape}, the teacher and student take "
                        f"{expected}."
                    )
        elif shape is not None:
            raise ValueError(
                "The data do not fit the models: images have shape "
                f"{shape}, the teacher and student take {expected}."
            )
        if labels is not None and hasattr(labels, "shape"):
            import numpy as np

            labels = np.asarray(labels)
            if labels.size and (
                labels.min() < 0 or labels.max() >= self.num_classes
            ):
                raise ValueError(
                    f"Labels must lie in [0, {self.num_classes}) for models "
                    f"with {self.num_classes} classes. Received labels in "
                    f"[{labels.min()}, {labels.max()}]."
                )

    def fit(self, x=None, y=None, *args, **kwargs):
        self.check_data(x, y)
        self.prefit_terms(x, y, batch_size=kwargs.get("batch_size"),
                          verbose=kwargs.get("verbose", 1))
        if any(type(t).set_epoch is not losses_base.DistillationLoss.set_epoch
               for t in self.distillation_terms):
            callbacks = list(kwargs.get("callbacks") or [])
            callbacks.append(_EpochToLosses(self))
            kwargs["callbacks"] = callbacks
        validation_data = kwargs.get("validation_data")
        if isinstance(validation_data, (tuple, list)):
            self.check_data(*validation_data[:2], require_indices=False)
        elif validation_data is not None:
            self.check_data(validation_data, require_indices=False)
        return super().fit(x, y, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        self.check_prefitted()
        return super().train_on_batch(x, y, *args, **kwargs)

    def check_prefitted(self):
        """Raises if a term has parts to fit on the teacher before
        training (SAKD's frozen branches) that are not fitted yet: `fit`
        does it first; `train_on_batch` and custom loops need
        `prefit_terms` (or they would train against random frozen
        branches)."""
        pending = [t.name for t in self.distillation_terms
                   if t.needs_prefit()]
        if pending:
            raise ValueError(
                f"Terms {pending} fit parts of themselves on the frozen "
                "teacher before training (e.g. SAKD's teacher branches, "
                "prefit_steps > 0), and that has not run yet. Train with "
                "`fit`, which does it first, or call "
                "`distiller.prefit_terms(x, y)` on training data before "
                "`train_on_batch` (or pass prefit_steps=0 to co-train "
                "the branches instead).")

    def prefit_terms(self, x, y=None, batch_size=None, verbose=1,
                     steps=None):
        """Lets every term fit its teacher-side parts before training
        (`DistillationLoss.prefit`; a no-op for most terms and once
        done). `fit` calls it; call it yourself to prefit without
        training (e.g. before `train_on_batch`). `steps` overrides each
        term's own number of prefit batches."""
        verbose = 1 if verbose == "auto" else verbose
        strategy = getattr(self, "_distribute_strategy", None)
        for term in self.distillation_terms:
            if strategy is not None:
                with strategy.scope():
                    term.prefit(self.teacher_view, x, y,
                                batch_size=batch_size, verbose=verbose,
                                steps=steps)
            else:
                term.prefit(self.teacher_view, x, y, batch_size=batch_size,
                            verbose=verbose, steps=steps)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self.check_data(x, y, require_indices=False)
        return super().evaluate(x, y, *args, **kwargs)

    # -- serialization -----------------------------------------------------
    def get_config(self):
        config = {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "distillation_losses": [
                {
                    "loss": keras.saving.serialize_keras_object(term),
                    "weight": weight,
                }
                for term, weight in zip(
                    self.distillation_terms, self.distillation_weights
                )
            ],
            "student_loss_weight": self.student_loss_weight,
            "logits_key": self.logits_key,
        }
        if not self.validate_terms:
            config["validate_terms"] = False
        # The resolved taps (layer paths, "auto" already chosen), so a
        # reload taps the same layers.
        if any(v is not None for v in self.features.values()):
            config["features"] = dict(self.features)
        if self.input_shape_arg is not None:
            config["input_shape"] = list(self.input_shape_arg)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(
            config["teacher"]
        )
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"]
        )
        return cls(**config)
