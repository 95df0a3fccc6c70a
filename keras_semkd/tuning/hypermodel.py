"""`DistillationHyperModel`: keras-tuner trials as recipe overrides.

Each trial's hyperparameter values are dotted `Recipe.override` paths
(`"terms.kd.weight"`, `"terms.kd.temperature"`,
`"optimizer.learning_rate"`, ...), so a trial *is* a recipe: `build(hp)`
applies the values to the base recipe, builds a fresh student and the
recipe's `Distiller` around the shared, frozen teacher, and compiles it
with the recipe's SGD schedule; `fit(hp, model)` trains on the train part
of the recipe's dataset and validates on the split carved out of train
(`data.validation_split > 0`), never on the test split. The objective is
`val_top1` (maximized).
"""

import contextlib

import keras
import keras_tuner

from keras_semkd import training
from keras_semkd.configs import experiment
from keras_semkd.distillers import build as build_lib
from keras_semkd.tuning import search_space as space_lib

#: The objective every tuner maximizes: top-1 on the carved validation set.
OBJECTIVE = "val_top1"


def objective():
    """`keras_tuner.Objective("val_top1", direction="max")`."""
    return keras_tuner.Objective(OBJECTIVE, direction="max")


def check_validation_split(recipe):
    """Raises `ValueError` unless the recipe carves a validation set out of
    train (tuning must never look at the test split)."""
    if not recipe.data.validation_split > 0:
        raise ValueError(
            f"Tuning recipe {recipe.name!r} validates on a split carved "
            "out of train, never on test: set data.validation_split > 0, "
            "e.g. recipe.override(**{'data.validation_split': 0.1}). "
            f"Received: validation_split={recipe.data.validation_split}"
        )


def _data_key(recipe):
    return (recipe.data, recipe.seed, tuple(t.name for t in recipe.terms),
            recipe.num_classes)


class DistillationHyperModel(keras_tuner.HyperModel):
    """Tunes a distillation recipe's loss weights, temperatures and
    learning rate with keras-tuner.

    `build(hp)` maps the trial's values onto `base_recipe.override(...)`,
    seeds Keras with the recipe's seed (every trial starts from the same
    student initialization), builds a fresh student and the `Distiller`
    (teacher shared and frozen), and compiles it with the recipe's SGD
    schedule and `top1`/`top5` metrics. `fit(hp, model, **kwargs)` builds
    the recipe's train and validation pipelines (the validation split is
    carved out of train; test is never read) and returns the Keras
    `History`, whose `val_top1` is the objective.

    Args:
        base_recipe: a `keras_semkd.configs.Recipe` with a teacher and
            `data.validation_split > 0`.
        teacher: the trained teacher, shared by all trials (frozen by the
            `Distiller`). `None` builds it once from `base_recipe.teacher`
            and `base_recipe.teacher_weights` (which must then be set).
        search_space: dict `path -> entry` (see
            `keras_semkd.tuning.search_space`); `None` uses
            `default_search_space(base_recipe)`.
        student_builder: optional callable `(recipe, input_shape) ->
            keras.Model` returning a *fresh* student with the zoo's dict
            outputs; default: the recipe's zoo model
            (`build_model(recipe.student, ...)`).
        data_dir: overrides `base_recipe.data.data_dir`.
        name: name of the hypermodel (keras-tuner).
        tunable: keras-tuner's `tunable` flag.
    """

    def __init__(self, base_recipe, teacher=None, search_space=None, *,
                 student_builder=None, data_dir=None, name=None,
                 tunable=True):
        super().__init__(name=name, tunable=tunable)
        if not isinstance(base_recipe, experiment.Recipe):
            raise TypeError(
                "base_recipe must be a keras_semkd.configs.Recipe. "
                f"Received: base_recipe={base_recipe!r} of type "
                f"{type(base_recipe).__name__}"
            )
        if base_recipe.teacher is None and teacher is None:
            raise ValueError(
                f"Recipe {base_recipe.name!r} has no teacher: there is "
                "nothing to distill. Received: teacher=None"
            )
        if teacher is None and not base_recipe.teacher_weights:
            raise ValueError(
                f"Recipe {base_recipe.name!r} distills from "
                f"{base_recipe.teacher!r} but no trained teacher was given: "
                "pass teacher= or set teacher_weights. Received: "
                "teacher=None, teacher_weights=None"
            )
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise TypeError(
                "teacher must be a keras.Model. "
                f"Received: teacher={teacher!r}"
            )
        if student_builder is not None and not callable(student_builder):
            raise TypeError(
                "student_builder must be a callable (recipe, input_shape) "
                "-> keras.Model. "
                f"Received: student_builder={student_builder!r}"
            )
        check_validation_split(base_recipe)
        if search_space is None:
            search_space = space_lib.default_search_space(base_recipe)
        self.base_recipe = base_recipe
        self.search_space = space_lib.validate_search_space(
            search_space, base_recipe, check=check_validation_split
        )
        self.teacher = teacher
        self.student_builder = student_builder
        self.data_dir = data_dir
        self._declare_only = False
        self._trial_data = None

    # -- hp -> recipe ---------------------------------------------------------
    def declare_hyperparameters(self, hp):
        space_lib.declare(hp, self.search_space)

    def overrides(self, hp):
        """The trial's `Recipe.override` changes (a dict path -> value)."""
        values = hp.values if hasattr(hp, "values") else dict(hp)
        return space_lib.overrides_from_values(values, self.search_space)

    def recipe_for(self, hp):
        """The base recipe with a trial's values applied. `hp` is a
        `keras_tuner.HyperParameters` or a dict `path -> value`."""
        return self.base_recipe.override(**self.overrides(hp))

    @contextlib.contextmanager
    def declaring_only(self):
        """Within this context `build(hp)` declares the hyperparameters and
        builds nothing (keras-tuner builds once to discover the space when
        a tuner is created)."""
        previous, self._declare_only = self._declare_only, True
        try:
            yield self
        finally:
            self._declare_only = previous

    # -- data and models ------------------------------------------------------
    def load_data(self, recipe):
        """`(train_ds, validation_ds, train_info, validation_info, steps)`
        of a trial recipe: the train part and the validation split carved
        out of it (`training.load_data` with `validation_split > 0`)."""
        check_validation_split(recipe)
        return training.load_data(recipe, self.data_dir)

    def _data(self, recipe):
        key = _data_key(recipe)
        if self._trial_data is not None and self._trial_data[0] == key:
            return self._trial_data[1]
        data = self.load_data(recipe)
        self._trial_data = (key, data)
        return data

    def _get_teacher(self, input_shape):
        if self.teacher is None:
            r = self.base_recipe
            teacher = build_lib.build_model(r.teacher, r.num_classes,
                                            input_shape=input_shape)
            teacher.load_weights(r.teacher_weights)
            self.teacher = teacher
        return self.teacher

    def _build_student(self, recipe, input_shape):
        if self.student_builder is None:
            return build_lib.build_model(
                recipe.student, recipe.num_classes,
                recipe.optimizer.weight_decay, input_shape=input_shape,
            )
        student = self.student_builder(recipe, input_shape)
        if not isinstance(student, keras.Model):
            raise TypeError(
                "student_builder must return a keras.Model. "
                f"Received: {student!r} of type {type(student).__name__}"
            )
        if self.teacher is not None and student is self.teacher:
            raise ValueError(
                "student_builder returned the teacher itself; it must build "
                "a fresh student for every trial."
            )
        return student

    # -- keras_tuner.HyperModel -----------------------------------------------
    def build(self, hp):
        """Declares the search space on `hp` and returns the compiled
        `Distiller` of the trial's recipe."""
        space_lib.declare(hp, self.search_space)
        if self._declare_only:
            return None
        recipe = self.recipe_for(hp)
        # A fresh data pipeline per trial: the same values give the same
        # run, whatever the order of the trials.
        self._trial_data = None
        _, _, train_info, _, steps = self._data(recipe)
        if recipe.mixed_precision:
            keras.mixed_precision.set_global_policy(recipe.mixed_precision)
        input_shape = tuple(train_info.input_shape)
        teacher = self._get_teacher(input_shape)
        keras.utils.set_random_seed(recipe.seed)
        student = self._build_student(recipe, input_shape)
        model, _ = training.build_and_compile(
            recipe, teacher, train_info,
            build_lib.sgd_optimizer(recipe.optimizer, steps), student=student,
        )
        # Built now so a checkpoint restores the optimizer too (Hyperband
        # continues a trial from its checkpoint: momentum and the step
        # count of the learning-rate schedule carry over).
        model.optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, *args, **kwargs):
        """Trains `model` on the trial recipe's train part, validating on
        the split carved out of train.

        keras-tuner passes `search()`'s keyword arguments (`epochs`,
        `callbacks`, `verbose`, Hyperband's `initial_epoch`); the data come
        from the recipe, so `x`, `y`, `validation_data` and
        `validation_split` are refused. `epochs` defaults to the recipe's.

        Returns:
            The Keras `History` (objective: `val_top1`).
        """
        if args:
            raise ValueError(
                "DistillationHyperModel builds its own train/validation "
                "data from the recipe: call search() without data. "
                f"Received: {len(args)} positional argument(s)."
            )
        given = sorted(k for k in ("x", "y", "validation_data",
                                   "validation_split", "steps_per_epoch")
                       if k in kwargs)
        if given:
            raise ValueError(
                "DistillationHyperModel builds its own train/validation "
                "data from the recipe (validation carved out of train). "
                f"Received: {given}"
            )
        recipe = self.recipe_for(hp)
        train_ds, val_ds, _, _, steps = self._data(recipe)
        self._trial_data = None
        kwargs.setdefault("epochs", recipe.epochs)
        return model.fit(
            train_ds, steps_per_epoch=steps, validation_data=val_ds,
            shuffle=False,  # tf.data pipelines shuffle themselves
            **kwargs,
        )
