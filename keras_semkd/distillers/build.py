"""Turns declared recipes into models and a `Distiller`.

Resolves the feature selectors of the declared terms (`configs.Term`s or
dicts; this module does not import `configs/`) against the stage features
of the concrete teacher and student, so one method declaration fits every
pair of the model zoo.
"""

import io
import os
import zipfile

import keras

from keras_semkd import losses as losses_lib
from keras_semkd import models as zoo
from keras_semkd.distillers import selectors
from keras_semkd.distillers.distiller import Distiller


def _accepts(name, arg):
    """Whether the loss registered as `name` declares the run-level value
    `arg` (`DistillationLoss.run_values`)."""
    return arg in losses_lib.LOSSES.get(name).run_values


def resolve_terms(terms, teacher, student, weight_decay=None,
                  num_train_examples=None):
    """Resolves selectors in a list of term dicts for a teacher/student.

    Teacher and student key lists produced by list-valued selectors are
    paired from the first element and truncated to the shorter one.

    Args:
        terms: `Term`s or term dicts.
        teacher, student: the built models.
        weight_decay: the protocol's coupled weight decay, given to terms
            with learned parts (those declaring `"weight_decay"` in their
            `run_values`) that do not set it (RepDistiller's SGD decays them
            with the student).
        num_train_examples: the training-set size, given as `num_data` to
            memory-bank terms (CRD: `"num_data"` in `run_values`) that do
            not set it.
    """
    resolved = []
    for term in terms:
        # A `configs.Term` (or anything with `to_dict`) or a plain dict:
        # distillers/ does not import configs/ (../shared/STYLE.md).
        term = dict(term.to_dict() if hasattr(term, "to_dict") else term)
        name = term["name"]
        if (weight_decay is not None and "weight_decay" not in term
                and _accepts(name, "weight_decay")):
            term["weight_decay"] = weight_decay
        if "num_data" not in term and _accepts(name, "num_data"):
            if num_train_examples is None:
                raise ValueError(
                    f"Term {name!r} keeps a memory bank over the training "
                    "set: give num_data (or build with num_train_examples)."
                )
            term["num_data"] = int(num_train_examples)
        resolved.append(selectors.resolve_term(term, teacher, student))
    return resolved


def logits_width(model, logits_key="logits"):
    """The number of logits of a (dict-output) model, or `None` when it
    cannot be read without running the model."""
    try:
        out = model.output
    except (AttributeError, ValueError):
        return None
    if isinstance(out, dict):
        out = out.get(logits_key)
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[-1] is None:
        return None
    return int(shape[-1])


def stored_num_classes(path):
    """The number of classes of the classifier stored in a Keras weights
    file (`.weights.h5`, or the weights inside a `.keras` file): the width
    of its one 2-D kernel. `None` when the file does not have exactly one
    (no check is then possible)."""
    import h5py

    def widths(h5):
        found = []
        h5.visititems(lambda name, obj: found.append(obj.shape[-1])
                      if isinstance(obj, h5py.Dataset) and obj.ndim == 2
                      else None)
        return found

    try:
        if os.fspath(path).endswith(".keras"):
            with zipfile.ZipFile(path) as z:
                with h5py.File(io.BytesIO(z.read("model.weights.h5")),
                               "r") as h5:
                    found = widths(h5)
        else:
            with h5py.File(path, "r") as h5:
                found = widths(h5)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    return int(found[0]) if len(found) == 1 else None


def check_num_classes(model, num_classes, role):
    """Raises a one-line `ValueError` when `model`'s logits are not
    `num_classes` wide (e.g. a teacher of another dataset)."""
    width = logits_width(model)
    if width is not None and width != num_classes:
        raise ValueError(
            f"The {role} {model.name!r} has {width} logits but the recipe "
            f"has num_classes={num_classes}: teacher and student must "
            "predict the same classes. Received: "
            f"{role} classes={width}, num_classes={num_classes}"
        )


def load_weights_checked(model, path, role, num_classes):
    """`model.load_weights(path)` with the class count checked first, so a
    file of another dataset gives one line naming both counts instead of
    Keras' per-variable dump."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {role} weights at {path!r}.")
    stored = stored_num_classes(path)
    if stored is not None and stored != num_classes:
        raise ValueError(
            f"The {role} weights {path!r} are for {stored} classes but the "
            f"recipe has num_classes={num_classes}: teacher and student must "
            "predict the same classes (train the teacher on this dataset). "
            f"Received: {role} classes={stored}, num_classes={num_classes}"
        )
    try:
        model.load_weights(path)
    except ValueError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"The {role} weights {path!r} do not fit {model.name!r} "
            f"({num_classes} classes): {first}"
        ) from None


def build_model(name, num_classes, weight_decay=0.0, input_shape=(32, 32, 3)):
    """A zoo model with PyTorch-style coupled weight decay."""
    return zoo.get(name, num_classes=num_classes, input_shape=input_shape,
                   weight_decay=weight_decay)


def build_distiller(recipe, teacher=None, student=None,
                    input_shape=(32, 32, 3), num_train_examples=None):
    """Builds (or reuses) teacher and student and the recipe's Distiller.

    Args:
        recipe: a `Recipe` with a teacher.
        teacher: an already built (trained) teacher; built from the recipe
            (and `recipe.teacher_weights`, if set) otherwise.
        student: an already built student; built from the recipe otherwise.
        input_shape: image shape of the data.
        num_train_examples: training-set size (for memory-bank terms).
    """
    if recipe.teacher is None and teacher is None:
        raise ValueError(
            f"Recipe {recipe.name!r} has no teacher: train the student "
            "alone with keras_semkd.training instead."
        )
    # The student first: right after `keras.utils.set_random_seed(seed)` it
    # gets the same initial weights as the same student trained alone or
    # distilled by any other method (paired seeds), whether or not the
    # teacher is built here.
    if student is None:
        student = build_model(recipe.student, recipe.num_classes,
                              recipe.optimizer.weight_decay,
                              input_shape=input_shape)
    else:
        check_num_classes(student, recipe.num_classes, "student")
    if teacher is None:
        teacher = build_model(recipe.teacher, recipe.num_classes,
                              input_shape=input_shape)
        if recipe.teacher_weights:
            load_weights_checked(teacher, recipe.teacher_weights, "teacher",
                                 recipe.num_classes)
    else:
        check_num_classes(teacher, recipe.num_classes, "teacher")
    terms = resolve_terms(recipe.terms, teacher, student,
                          weight_decay=recipe.optimizer.weight_decay,
                          num_train_examples=num_train_examples)
    return Distiller(
        teacher, student, distillation_losses=terms,
        student_loss_weight=recipe.student_loss_weight,
        validate_terms=recipe.validate_terms,
        name=f"distiller_{recipe.name}",
    )


def sgd_optimizer(config, steps_per_epoch):
    """SGD + momentum with the protocol's step decay at epoch milestones."""
    boundaries = [int(m * steps_per_epoch) for m in config.milestones]
    if boundaries:
        values = [config.learning_rate * config.decay_rate**i
                  for i in range(len(boundaries) + 1)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, values
        )
    else:
        lr = config.learning_rate
    return keras.optimizers.SGD(learning_rate=lr, momentum=config.momentum,
                                nesterov=config.nesterov)
