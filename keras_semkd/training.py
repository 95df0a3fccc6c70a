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
import numpy as np
from absl import logging

from keras_semkd import data as data_lib
from keras_semkd import distribute
from keras_semkd import losses as losses_lib
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
    with_index = any(
        getattr(losses_lib.LOSSES.get(t.name), "needs_indices", False)
        for t in recipe.terms
    )
    train_ds, train_info = data_lib.get_dataset(
        cfg.dataset, "train", cfg.batch_size, data_dir=data_dir,
        augment=cfg.augment, seed=recipe.seed,
        validation_split=cfg.validation_split, with_index=with_index,
        split_seed=cfg.split_seed,
    )
    eval_split = "validation" if cfg.validation_split > 0 else "test"
    test_ds, test_info = data_lib.get_dataset(
        cfg.dataset, eval_split, cfg.batch_size, data_dir=data_dir,
        seed=recipe.seed, validation_split=cfg.validation_split,
        split_seed=cfg.split_seed,
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
    its layers, so training the view trains the model.

    The logits are cast to float32 (a `float32` linear activation, Keras'
    mixed-precision recipe), so the loss and the top-k metrics see float32
    under `mixed_bfloat16` too (the top-k kernels reject bfloat16)."""
    logits = keras.layers.Activation(
        "linear", dtype="float32", name="logits_float32"
    )(model.output["logits"])
    return keras.Model(model.inputs, logits, name=f"{model.name}_logits")


def build_and_compile(recipe, teacher, train_info, optimizer):
    """The compiled model a recipe trains, and its student: a `Distiller`
    when the recipe (or `teacher`) has a teacher, else the student's
    single-output `classifier_view` with cross-entropy.

    Returns:
        `(model, student)`.
    """
    if recipe.teacher is not None or teacher is not None:
        if teacher is None and not recipe.teacher_weights:
            raise ValueError(
                f"Recipe {recipe.name!r} distills from {recipe.teacher!r} "
                "but no trained teacher was given: pass teacher= or set "
                "teacher_weights."
            )
        model = build.build_distiller(
            recipe, teacher=teacher, input_shape=train_info.input_shape,
            num_train_examples=train_info.num_examples,
        )
        model.compile(optimizer=optimizer, metrics=_metrics())
        return model, model.student
    student = build.build_model(
        recipe.student, recipe.num_classes, recipe.optimizer.weight_decay,
        input_shape=train_info.input_shape,
    )
    model = classifier_view(student)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_metrics(),
    )
    return model, student


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
    model, student = build_and_compile(recipe, teacher, train_info,
                                       optimizer)
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


# ---------------------------------------------------------------------------
# Run directories: checkpoints, history, resume.
# ---------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


def _atomic_write(path, write):
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _state_variables(model):
    """Variables that make up the training state (the frozen teacher's
    weights are excluded: they never change)."""
    teacher = getattr(model, "teacher", None)
    skip = {id(v) for v in teacher.weights} if teacher is not None else set()
    weights = [v for v in model.weights if id(v) not in skip]
    return weights + list(model.optimizer.variables)


class _RunCallback(keras.callbacks.Callback):
    """Per-step/epoch bookkeeping of `run`: state checkpoints, NaN stop,
    metric restore on resume."""

    def __init__(self, runner, epoch, first_step, restore_metrics=None):
        super().__init__()
        self.runner = runner
        self.epoch = epoch
        self.first_step = first_step
        self.restore_metrics = restore_metrics
        self.bad_step = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.restore_metrics is not None:
            values = self.restore_metrics
            variables = self.model.metrics_variables
            if len(values) != len(variables):
                raise ValueError(
                    "The checkpointed metric state does not match the "
                    f"model's metrics ({len(values)} vs {len(variables)} "
                    "variables): resume with the same recipe."
                )
            for v, value in zip(variables, values):
                v.assign(value)
            self.restore_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        step = self.first_step + batch + 1
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = step
            self.model.stop_training = True
            return
        every = self.runner.checkpoint_every
        global_step = self.runner.steps_per_epoch * self.epoch + step
        if every and global_step % every == 0 and \
                step < self.runner.steps_per_epoch:
            self.runner.save_state(self.epoch, step)


class Runner:
    """Trains a recipe in a run directory, resumable at step granularity.

    The run directory holds `config.json` (the resolved recipe),
    `history.csv`, `tensorboard/`, `checkpoints/{last,best}.weights.h5`
    (the student), `state.npz` + `state.json` (the full training state:
    student, learned loss parts, optimizer, metric accumulators, position
    in the data stream) and `report.json`.

    Each epoch's data stream is a fixed function of `(seed, epoch)`
    (`get_dataset(..., epoch=e)`), so a run killed mid-epoch and resumed
    from its last state reaches the same weights and metrics as an
    uninterrupted run with the same seed (with `deterministic=True`).

    Args:
        recipe: the `Recipe`.
        run_dir: the run directory (created).
        teacher: a trained teacher (else `recipe.teacher_weights`).
        checkpoint_every: also save the state every N training steps.
        deterministic: enable TF op determinism (identical metrics for a
            fixed seed on CPU).
        strategy: a `tf.distribute` strategy (TF backend); default: none.
        data_dir: overrides `recipe.data.data_dir`.
    """

    def __init__(self, recipe, run_dir, *, teacher=None, checkpoint_every=None,
                 deterministic=True, strategy=None, data_dir=None):
        self.recipe = recipe
        self.run_dir = run_dir
        self.teacher = teacher
        self.checkpoint_every = checkpoint_every
        self.deterministic = deterministic
        self.strategy = strategy
        self.data_dir = data_dir if data_dir is not None \
            else recipe.data.data_dir
        # Only the chief writes (multi-worker runs); others only read.
        self.chief = distribute.is_chief()
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        if self.chief:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        self.state_path = os.path.join(run_dir, "state.npz")
        self.meta_path = os.path.join(run_dir, "state.json")
        self._check_config()

    # -- setup ---------------------------------------------------------------
    def _check_config(self):
        if not self.chief:
            return
        path = os.path.join(self.run_dir, "config.json")
        text = self.recipe.to_json()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = f.read()
            if old != text and os.path.exists(self.meta_path):
                raise ValueError(
                    f"Run directory {self.run_dir!r} holds a run of a "
                    "different config; resume with the same recipe or use "
                    "a new directory."
                )
        _atomic_write(path, lambda p: open(p, "w", encoding="utf-8")
                      .write(text))

    def _datasets(self, epoch):
        cfg = self.recipe.data
        with_index = any(
            getattr(losses_lib.LOSSES.get(t.name), "needs_indices", False)
            for t in self.recipe.terms
        )
        train_ds, info = data_lib.get_dataset(
            cfg.dataset, "train", cfg.batch_size, data_dir=self.data_dir,
            augment=cfg.augment, seed=self.recipe.seed,
            validation_split=cfg.validation_split, with_index=with_index,
            split_seed=cfg.split_seed, epoch=epoch,
        )
        if cfg.limit_train:
            train_ds = train_ds.take(self.steps_per_epoch)
        # Multi-worker: each worker gets its share of every global batch.
        train_ds = distribute.prepare_dataset(train_ds, self.strategy)
        return train_ds, info

    def _build(self):
        recipe = self.recipe
        keras.utils.set_random_seed(recipe.seed)
        if self.deterministic and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        if recipe.mixed_precision:
            keras.mixed_precision.set_global_policy(recipe.mixed_precision)
        _, _, train_info, _, steps = load_data(recipe, self.data_dir)
        self.steps_per_epoch = steps
        self.train_info = train_info
        cfg = recipe.data
        eval_split = "validation" if cfg.validation_split > 0 else "test"
        self.eval_ds, self.eval_info = data_lib.get_dataset(
            cfg.dataset, eval_split, cfg.batch_size, data_dir=self.data_dir,
            seed=recipe.seed, validation_split=cfg.validation_split,
            split_seed=cfg.split_seed,
        )
        if cfg.limit_eval:
            self.eval_ds = self.eval_ds.take(
                max(1, math.ceil(cfg.limit_eval / cfg.batch_size)))
        # Multi-worker: each worker evaluates its share of every batch.
        self.eval_ds = distribute.prepare_dataset(self.eval_ds, self.strategy)
        if distribute.num_workers(self.strategy) > 1:
            # Keras 3 needs two fixes to fit under multi-worker strategies.
            distribute.patch_keras_for_multi_worker()
        scope = self.strategy.scope() if self.strategy else _null_scope()
        with scope:
            optimizer = build.sgd_optimizer(recipe.optimizer, steps)
            model, student = build_and_compile(
                recipe, self.teacher, train_info, optimizer)
            model.optimizer.build(model.trainable_variables)
        # Build the compiled metrics now (Keras builds them lazily in the
        # first step), so a resumed run can restore their accumulators.
        model.evaluate(self.eval_ds.take(1), verbose=0)
        self.model, self.student = model, student

    # -- state -------------------------------------------------------------
    def save_state(self, epoch, step, extra=None):
        """Saves the full training state at (epoch, step-in-epoch)."""
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        values = [keras.ops.convert_to_numpy(v)
                  for v in _state_variables(self.model)]
        metrics = [keras.ops.convert_to_numpy(v)
                   for v in self.model.metrics_variables] if step else []
        # Every worker reads the values above: under a multi-worker strategy
        # reading a metric (sync-on-read) variable is a collective that
        # needs all workers. Only the chief writes.
        if not self.chief:
            return
        arrays = {f"v{i}": a for i, a in enumerate(values)}
        arrays.update({f"m{i}": a for i, a in enumerate(metrics)})
        _atomic_write(self.state_path,
                      lambda p: np.savez(open(p, "wb"), **arrays))
        meta = {"epoch": epoch, "step": step, "num_variables": len(values),
                "num_metric_variables": len(metrics),
                "best_top1": self.best_top1, "history": self.history}
        meta.update(extra or {})
        _atomic_write(self.meta_path, lambda p: open(
            p, "w", encoding="utf-8").write(json.dumps(meta, indent=1)))

    def _load_state(self):
        if not (os.path.exists(self.meta_path)
                and os.path.exists(self.state_path)):
            return 0, 0, None
        with open(self.meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        with np.load(self.state_path) as data:
            values = [data[f"v{i}"] for i in range(meta["num_variables"])]
            metrics = [data[f"m{i}"]
                       for i in range(meta["num_metric_variables"])]
        variables = _state_variables(self.model)
        if len(variables) != len(values) or any(
            tuple(v.shape) != a.shape for v, a in zip(variables, values)
        ):
            raise ValueError(
                f"The state in {self.run_dir!r} does not fit this model "
                f"({len(values)} saved vs {len(variables)} variables)."
            )
        for v, a in zip(variables, values):
            v.assign(a)
        self.best_top1 = meta.get("best_top1")
        self.history = meta.get("history", [])
        return meta["epoch"], meta["step"], (metrics or None)

    # -- the loop ------------------------------------------------------------
    def run(self, verbose=1, callbacks=None):
        """Trains to `recipe.epochs`, resuming from the run directory.

        Returns the report dict (also written to `report.json`).
        """
        self.best_top1, self.history = None, []
        self._build()
        epoch, step, metrics = self._load_state()
        # Multi-worker: all workers must resume from the same point.
        distribute.check_same_on_all_workers(
            self.strategy, (epoch, step), "the resume point (epoch, step)")
        if epoch or step:
            logging.info("Resuming %s at epoch %d, step %d.", self.run_dir,
                         epoch, step)
        started = time.time()
        tb = os.path.join(self.run_dir, "tensorboard")
        for e in range(epoch, self.recipe.epochs):
            first = step if e == epoch else 0
            train_ds, _ = self._datasets(e)
            if first:
                train_ds = train_ds.skip(first)
            control = _RunCallback(self, e, first,
                                   metrics if e == epoch else None)
            epoch_start = time.time()
            hist = self.model.fit(
                train_ds, initial_epoch=e, epochs=e + 1,
                steps_per_epoch=self.steps_per_epoch - first,
                validation_data=self.eval_ds, verbose=verbose,
                shuffle=False,
                # Only the chief writes TensorBoard logs (multi-worker).
                callbacks=[control]
                + ([keras.callbacks.TensorBoard(tb)] if self.chief else [])
                + list(callbacks or []),
            )
            if control.bad_step is not None:
                raise NonFiniteLossError(
                    f"The training loss became non-finite at epoch {e + 1}, "
                    f"step {control.bad_step}. Last good state: "
                    f"{self.state_path} (epoch/step in {self.meta_path}); "
                    "lower the learning rate or a loss weight."
                )
            row = {k: float(v[-1]) for k, v in hist.history.items()}
            row["epoch"] = e + 1
            row["seconds"] = time.time() - epoch_start
            row["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))
            self.history.append(row)
            top1 = row.get("val_top1")
            improved = top1 is not None and (self.best_top1 is None
                                             or top1 > self.best_top1)
            if improved:
                self.best_top1 = top1
            if self.chief:
                self._write_csv()
                self.student.save_weights(
                    os.path.join(self.ckpt_dir, "last.weights.h5"))
                if improved:
                    self.student.save_weights(
                        os.path.join(self.ckpt_dir, "best.weights.h5"))
            self.save_state(e + 1, 0)
        return self._report(time.time() - started)

    def _write_csv(self):
        keys = ["epoch"] + sorted({k for r in self.history for k in r}
                                  - {"epoch"})
        lines = [",".join(keys)]
        for r in self.history:
            lines.append(",".join(str(r.get(k, "")) for k in keys))
        _atomic_write(os.path.join(self.run_dir, "history.csv"),
                      lambda p: open(p, "w", encoding="utf-8")
                      .write("\n".join(lines) + "\n"))

    def _report(self, seconds):
        last = self.history[-1] if self.history else {}
        info = dataclasses.asdict(self.train_info)
        for key in ("class_names", "coarse_class_names"):
            info.pop(key, None)
        info["normalization"] = str(info.get("normalization"))
        report = {
            "recipe": self.recipe.to_dict(),
            "last": {"top1": last.get("val_top1"),
                     "top5": last.get("val_top5")},
            "best_top1": self.best_top1,
            "epochs_done": len(self.history),
            "history": self.history,
            "data": info,
            "seconds_this_session": seconds,
        }
        if self.chief:
            _atomic_write(os.path.join(self.run_dir, "report.json"),
                          lambda p: open(p, "w", encoding="utf-8").write(
                              json.dumps(report, indent=2, default=str)))
        return report


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
