"""Runs a recipe end to end: data, models, optimizer, fit, evaluation.

This sits at the top of the package's import arrows (it uses `configs`,
`data`, `distillers` and `models`); the `experiments/` scripts are thin
absl front ends over it.
"""

import dataclasses
import json
import math
import os
import time

import keras

from keras_semkd import data as data_lib
from keras_semkd.distillers import build


def _metrics():
    return [
        keras.metrics.SparseCategoricalAccuracy(name="top1"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
    ]


def load_data(recipe, data_dir=None):
    """Returns `(train_ds, test_ds, train_info, test_info, steps)`.

    `recipe.data.limit_train` / `limit_eval` cap the examples per epoch
    (whole batches), for smoke runs.
    """
    cfg = recipe.data
    data_dir = data_dir if data_dir is not None else cfg.data_dir
    train_ds, train_info = data_lib.get_dataset(
        cfg.dataset, "train", cfg.batch_size, data_dir=data_dir,
        augment=cfg.augment, seed=recipe.seed,
        validation_split=cfg.validation_split,
    )
    eval_split = "validation" if cfg.validation_split > 0 else "test"
    test_ds, test_info = data_lib.get_dataset(
        cfg.dataset, eval_split, cfg.batch_size, data_dir=data_dir,
        seed=recipe.seed, validation_split=cfg.validation_split,
    )
    steps = train_info.num_batches
    if cfg.limit_train:
        steps = max(1, min(steps, cfg.limit_train // cfg.batch_size))
        train_ds = train_ds.take(steps)
    if cfg.limit_eval:
        eval_steps = max(1, math.ceil(cfg.limit_eval / cfg.batch_size))
        test_ds = test_ds.take(eval_steps)
    if train_info.num_classes != recipe.num_classes:
        raise ValueError(
            f"Recipe {recipe.name!r} declares {recipe.num_classes} classes "
            f"but dataset {cfg.dataset!r} has {train_info.num_classes}. "
            "Set num_classes to match the data."
        )
    return train_ds, test_ds, train_info, test_info, steps


def classifier_view(model):
    """A single-output view (logits) of a dict-output zoo model; shares
    its layers, so training the view trains the model."""
    return keras.Model(model.inputs, model.output["logits"],
                       name=f"{model.name}_logits")


def train(recipe, *, teacher=None, data_dir=None, verbose=1, callbacks=None):
    """Trains `recipe.student` alone (no teacher in the recipe and none
    given) or distills the teacher into it.

    Args:
        recipe: a `keras_semkd.configs.Recipe`.
        teacher: a trained teacher model; else built from the recipe
            (`recipe.teacher_weights` must then be set).
        data_dir: overrides `recipe.data.data_dir`.
        verbose: Keras progress-bar verbosity.
        callbacks: extra Keras callbacks.

    Returns:
        dict with `student` (the trained model), `history`, `test`
        (top1/top5 of the last epoch), `data` (DatasetInfo as dict),
        `seconds`.
    """
    keras.utils.set_random_seed(recipe.seed)
    if recipe.mixed_precision:
        keras.mixed_precision.set_global_policy(recipe.mixed_precision)
    train_ds, test_ds, train_info, test_info, steps = load_data(
        recipe, data_dir
    )
    optimizer = build.sgd_optimizer(recipe.optimizer, steps)
    started = time.time()
    distill = recipe.teacher is not None or teacher is not None
    if distill:
        if teacher is None and not recipe.teacher_weights:
            raise ValueError(
                f"Recipe {recipe.name!r} distills from {recipe.teacher!r} "
                "but no trained teacher was given: pass teacher= or set "
                "teacher_weights."
            )
        model = build.build_distiller(
            recipe, teacher=teacher, input_shape=train_info.input_shape
        )
        student = model.student
        model.compile(optimizer=optimizer, metrics=_metrics())
    else:
        student = build.build_model(
            recipe.student, recipe.num_classes,
            recipe.optimizer.weight_decay,
            input_shape=train_info.input_shape,
        )
        model = classifier_view(student)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=_metrics(),
        )
    history = model.fit(
        train_ds, epochs=recipe.epochs, steps_per_epoch=steps,
        validation_data=test_ds, verbose=verbose, callbacks=callbacks,
        shuffle=False,  # tf.data pipelines shuffle themselves
    )
    seconds = time.time() - started
    test = {
        "top1": float(history.history["val_top1"][-1]),
        "top5": float(history.history["val_top5"][-1]),
    }
    info = dataclasses.asdict(train_info)
    info.pop("class_names", None)
    info.pop("coarse_class_names", None)
    info["normalization"] = str(info.get("normalization"))
    return {
        "model": model,
        "student": student,
        "history": {k: [float(v) for v in vs]
                    for k, vs in history.history.items()},
        "test": test,
        "best_top1": float(max(history.history["val_top1"])),
        "data": info,
        "seconds": seconds,
    }


def write_report(result, recipe, path):
    """Writes the recipe, metrics and data description as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    report = {
        "recipe": recipe.to_dict(),
        "test": result["test"],
        "best_top1": result["best_top1"],
        "history": result["history"],
        "data": result["data"],
        "seconds": result["seconds"],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, default=str)
    return report
