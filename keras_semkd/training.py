"""Runs a recipe end to end: data, models, optimizer, fit, evaluation.

This sits at the top of the package's import arrows (it uses `configs`,
`data`, `distillers` and `models`); the `experiments/` scripts are thin
absl front ends over it.
"""

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import socket
import sys
import time

import keras
import numpy as np
from absl import logging

try:  # POSIX: the run-directory lock.
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None

from keras_semkd import data as data_lib
from keras_semkd import distribute
from keras_semkd import losses as losses_lib
from keras_semkd.distillers import build


def _metrics():
    return [
        keras.metrics.SparseCategoricalAccuracy(name="top1"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
    ]


def _with_index(recipe):
    return any(
        getattr(losses_lib.LOSSES.get(t.name), "needs_indices", False)
        for t in recipe.terms
    )


def eval_split_name(recipe):
    """The split a recipe is scored on while it trains: the carved
    validation part when `data.validation_split > 0`, else the test split."""
    return "validation" if recipe.data.validation_split > 0 else "test"


def load_data(recipe, data_dir=None):
    """Returns `(train_ds, eval_ds, train_info, eval_info, steps)`.

    The evaluation split is `eval_split_name(recipe)`, normalized with the
    statistics of the training images.  `recipe.data.limit_train` caps the
    training examples per epoch (whole batches of the shuffled stream) and
    `limit_eval` evaluates on a stratified subset of that many images
    (`eval_info.describe_split()` says so), for smoke runs.
    """
    cfg = recipe.data
    data_dir = data_dir if data_dir is not None else cfg.data_dir
    train_ds, train_info = data_lib.get_dataset(
        cfg.dataset, "train", cfg.batch_size, data_dir=data_dir,
        augment=cfg.augment, seed=recipe.seed,
        validation_split=cfg.validation_split, with_index=_with_index(recipe),
        split_seed=cfg.split_seed, **cfg.loader_kwargs(),
    )
    if train_info.num_classes != recipe.num_classes:
        raise ValueError(
            f"Recipe {recipe.name!r} declares {recipe.num_classes} classes "
            f"but dataset {cfg.dataset!r} has {train_info.num_classes}. "
            "Set num_classes to match the data."
        )
    eval_ds, eval_info = data_lib.get_dataset(
        cfg.dataset, eval_split_name(recipe), cfg.batch_size,
        data_dir=data_dir, seed=recipe.seed,
        validation_split=cfg.validation_split, split_seed=cfg.split_seed,
        normalization=train_info.normalization, max_examples=cfg.limit_eval,
        **cfg.loader_kwargs(),
    )
    if eval_info.class_names != train_info.class_names:
        raise ValueError(
            f"The {eval_info.split!r} split of {cfg.dataset!r} has classes "
            f"{list(eval_info.class_names)}, the train split "
            f"{list(train_info.class_names)}."
        )
    steps = train_info.num_batches
    if cfg.limit_train:
        steps = max(1, min(steps, cfg.limit_train // cfg.batch_size))
        train_ds = train_ds.take(steps)
    return train_ds, eval_ds, train_info, eval_info, steps


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


def build_and_compile(recipe, teacher, train_info, optimizer, student=None):
    """The compiled model a recipe trains, and its student: a `Distiller`
    when the recipe (or `teacher`) has a teacher, else the student's
    single-output `classifier_view` with cross-entropy. The one place a
    recipe becomes a compiled model (`train`, `Runner`, the tuner's
    `DistillHyperModel`).

    Args:
        recipe: the `Recipe`.
        teacher: a built (trained) teacher, or `None` to build it from the
            recipe (`teacher_weights`).
        train_info: the training `DatasetInfo` (input shape, size).
        optimizer: the optimizer to compile with.
        student: an already built student (distillation only), or `None`
            to build the recipe's.

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
            recipe, teacher=teacher, student=student,
            input_shape=train_info.input_shape,
            num_train_examples=train_info.num_examples,
        )
        model.compile(optimizer=optimizer, metrics=_metrics())
        return model, model.student
    if student is not None:
        raise ValueError(
            f"Recipe {recipe.name!r} trains its student alone: student= "
            "is only for distillation (build the student from the recipe)."
        )
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
        (top1/top5 of the last epoch on the evaluation split -- the carved
        validation part when `data.validation_split > 0`), `eval` (which
        images those are: `DatasetInfo.split_record()`), `data` (the
        training `DatasetInfo` as dict), `seconds`.
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
    return {
        "model": model,
        "student": student,
        "history": {k: [float(v) for v in vs]
                    for k, vs in history.history.items()},
        "test": test,
        "eval": test_info.split_record(),
        "best_top1": float(max(history.history["val_top1"])),
        "data": _info_dict(train_info),
        "seconds": seconds,
    }


def _info_dict(info):
    """A `DatasetInfo` as report JSON (class names live in `data.json`)."""
    out = dataclasses.asdict(info)
    out.pop("class_names", None)
    out.pop("coarse_class_names", None)
    norm = info.normalization
    out["normalization"] = None if norm is None else {
        "mean": list(norm.mean), "std": list(norm.std),
        "source": info.normalization_source}
    return out


def write_report(result, recipe, path):
    """Writes the recipe, metrics and data description as JSON."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    report = {
        "recipe": recipe.to_dict(),
        "test": result["test"],
        "eval": result.get("eval"),
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
CONFIG_FILE = "config.json"
EPOCH_STATE = "epoch_state"
DATA_FILE = "data.json"
LOCK_FILE = "run.lock"
DATA_FORMAT = "keras_semkd.run_data/1"

#: Fields a run started with `resume_from=` may not change: they define
#: the model, the data stream or the run's identity (its seed and teacher).
FIXED_WHEN_RESUMING = (
    "student", "teacher", "teacher_weights", "num_classes", "seed",
    "data.dataset", "data.batch_size", "data.validation_split",
    "data.split_seed", "data.limit_train",
)

#: Fields of `data.json` that must not change while a run resumes: the
#: classes, statistics and training images the weights were trained on.
DATA_IDENTITY = (
    "dataset", "is_generated", "num_classes", "class_names", "input_shape",
    "normalization.mean", "normalization.std", "train.num_examples",
    "train.validation_split", "train.split_seed",
)


def state_files(path):
    """`(run_dir, npz, json)` of a training state: a run directory stands
    for its latest state (`state.npz` + `state.json`); a path to either
    file of a pair (e.g. `<run_dir>/epoch_state.json`, the state at the end
    of the last completed epoch) for that pair."""
    path = os.fspath(path)
    for ext in (".json", ".npz"):
        if path.endswith(ext) and not os.path.isdir(path):
            stem = path[:-len(ext)]
            return (os.path.dirname(stem) or ".", stem + ".npz",
                    stem + ".json")
    return (path, os.path.join(path, "state.npz"),
            os.path.join(path, "state.json"))


def _state_exists(files):
    return os.path.exists(files[1]) and os.path.exists(files[2])


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss or the training state becomes NaN or
    infinite (no non-finite state is ever written)."""


class RunDirectoryLockedError(RuntimeError):
    """Raised when another run is writing the run directory."""


class ConfigMismatchError(ValueError):
    """Raised when a run directory holds a run of a different config."""


class DataMismatchError(ValueError):
    """Raised when a run would resume on other data (classes, statistics
    or training images) than it was trained on."""


def _atomic_write(path, write):
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_text(path, text):
    def write(p):
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def _format_diff(diff, left, right):
    return "; ".join(f"{k}: {left} {a!r}, {right} {b!r}"
                     for k, (a, b) in diff.items())


def _flatten(d, prefix=""):
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _state_variables(model):
    """Variables that make up the training state (the frozen teacher's
    weights are excluded: they never change)."""
    teacher = getattr(model, "teacher", None)
    skip = {id(v) for v in teacher.weights} if teacher is not None else set()
    weights = [v for v in model.weights if id(v) not in skip]
    return weights + list(model.optimizer.variables)


def _non_finite(arrays, variables=None):
    """Names (or indices) of the floating-point arrays holding NaN/inf."""
    bad = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            v = variables[i] if variables is not None else None
            bad.append(getattr(v, "path", None) or getattr(v, "name", None)
                       or f"array {i}")
    return bad


# -- the run's data record ---------------------------------------------------
def data_record(recipe, train_info, eval_info, data_dir):
    """What a run trains and is scored on, as stored in `data.json`: the
    dataset and where it was read, the class names (label `i` is
    `class_names[i]`), the input shape, the normalization statistics the
    model was trained under, and which images the train and evaluation
    splits are (carved, subset). `evaluate.py` and `export.py` read it, so
    they use the training statistics and class names, not re-derived
    ones."""
    norm = train_info.normalization
    return {
        "format": DATA_FORMAT,
        "dataset": recipe.data.dataset,
        "data_dir": None if data_dir is None else os.fspath(data_dir),
        "source": train_info.source,
        "is_generated": bool(train_info.is_generated),
        "num_classes": int(train_info.num_classes),
        "class_names": [str(c) for c in train_info.class_names],
        "input_shape": [int(d) for d in train_info.input_shape],
        "normalization": {
            "mean": list(norm.mean), "std": list(norm.std),
            "source": train_info.normalization_source,
            "formula": "(uint8 / 255 - mean) / std",
        },
        "train": train_info.split_record(),
        "eval": eval_info.split_record(),
        # Loader arguments the images were read with (resize on load).
        "loader": {k: list(v) if isinstance(v, tuple) else v
                   for k, v in recipe.data.loader_kwargs().items()},
    }


def read_run_data(run_dir):
    """The data record of a run directory (see `data_record`).

    A run written before `data.json` existed gets one reconstructed from
    its `config.json` (the recipe's dataset and `data_dir`, statistics of
    its training images), with `"reconstructed": True`.

    Raises:
        FileNotFoundError: `run_dir` has neither `data.json` nor
            `config.json`.
    """
    path = os.path.join(run_dir, DATA_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    config = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(config):
        raise FileNotFoundError(
            f"{run_dir!r} is not a run directory: it has neither {DATA_FILE} "
            f"nor {CONFIG_FILE}."
        )
    from keras_semkd import configs

    with open(config, encoding="utf-8") as f:
        recipe = configs.Recipe.from_json(f.read())
    cfg = recipe.data
    _, _, train_info = data_lib.load_split(
        cfg.dataset, "train", data_dir=cfg.data_dir,
        validation_split=cfg.validation_split, seed=recipe.seed,
        split_seed=cfg.split_seed, **cfg.loader_kwargs())
    _, _, eval_info = data_lib.load_split(
        cfg.dataset, eval_split_name(recipe), data_dir=cfg.data_dir,
        validation_split=cfg.validation_split, seed=recipe.seed,
        split_seed=cfg.split_seed, normalization=train_info.normalization,
        max_examples=cfg.limit_eval, **cfg.loader_kwargs())
    record = data_record(recipe, train_info, eval_info, cfg.data_dir)
    record["reconstructed"] = True
    return record


def run_normalization(record):
    """The training `Normalization` of a data record."""
    norm = record["normalization"]
    return data_lib.Normalization(mean=norm["mean"], std=norm["std"])


def held_out_split_args(record, split, dataset=None):
    """`get_dataset` arguments that select `split` of a run's data so that
    `"validation"` is only ever held-out data.

    `"validation"` of a run trained with `validation_split > 0` is that
    carve-out (same fraction and `split_seed`); of a run trained on all of
    train it is the dataset's own validation split, and when the dataset
    has none there is no held-out validation data: a `ValueError` says so
    (carving one now would score training images). `"train"` is the part
    the run trained on. `dataset` (default: the run's) evaluates the run
    on another dataset; a carve-out then applies only to the run's own.

    Returns:
        dict with `validation_split`, `split_seed` (and `seed`), and the
        loader arguments of the run's own data (`record_loader_kwargs`).
    """
    loader = record_loader_kwargs(record, dataset)
    dataset = dataset or record["dataset"]
    train = record.get("train", {})
    fraction = float(train.get("validation_split") or 0.0)
    own = dataset == record["dataset"]
    if split in ("train", "validation") and own and fraction > 0:
        return {"validation_split": fraction,
                "split_seed": int(train["split_seed"]), "seed": 0, **loader}
    if split == "validation" and "validation" not in \
            data_lib.DATASETS.get(dataset).splits:
        raise ValueError(
            f"The run trained on all of {record['dataset']!r}'s train split "
            f"and {dataset!r} has no validation split of its own, so there "
            "is no held-out validation data for it: evaluate split='test', "
            "or train with data.validation_split > 0 (a carve-out made now "
            "would score images the model trained on)."
        )
    return {"validation_split": 0.0, "split_seed": None, "seed": 0, **loader}


def record_loader_kwargs(record, dataset=None):
    """The loader arguments (e.g. `image_size`) a run's own data were read
    with, for reading them again; `{}` for another dataset."""
    if dataset is not None and dataset != record["dataset"]:
        return {}
    loader = dict(record.get("loader") or {})
    if isinstance(loader.get("image_size"), list):
        loader["image_size"] = tuple(loader["image_size"])
    return loader


def check_class_names(record, info, what="the data"):
    """Raises a `DataMismatchError` unless `info` (a `DatasetInfo`) has
    the class names, in the same order, of the run's data record."""
    expected = list(record["class_names"])
    found = list(info.class_names)
    if found == expected:
        return
    missing = [c for c in expected if c not in found]
    unexpected = [c for c in found if c not in expected]
    raise DataMismatchError(
        f"The classes of {what} differ from those the run was trained on "
        f"(label i must mean the same class): missing {missing}, "
        f"unexpected {unexpected}"
        + ("" if missing or unexpected else
           f", order {found} instead of {expected}") + "."
    )


# -- the run-directory lock --------------------------------------------------
class RunLock:
    """An exclusive, advisory lock on a run directory (`run.lock`).

    Held by the one process writing the directory, released when it ends
    (also when it is killed: the lock is the open file's `flock`, which
    the kernel drops with the process). The file names the holder (pid,
    host, start time, command), so a refused second writer is told who
    holds it. Re-entrant within one `RunLock` object. No-op where `fcntl`
    is missing (Windows).
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_FILE)
        self._fd = None
        self._depth = 0

    @staticmethod
    def holder_of(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self):
        holder = self.holder_of(self.path)
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
               f"started {holder.get('started', '?')}: "
               f"{holder.get('command', '?')}") if holder else \
            "holder not yet recorded"
        raise RunDirectoryLockedError(
            f"Run directory {self.run_dir!r} is being written by another "
            f"run ({who}). One run writes a run directory at a time: wait "
            "for it to finish, or use another directory."
        )

    def probe(self):
        """Raises `RunDirectoryLockedError` if another process holds the
        lock now (takes nothing)."""
        if fcntl is None or self._depth or not os.path.exists(self.path):
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refuse()
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self):
        if self._depth:
            self._depth += 1
            return
        if fcntl is not None:
            os.makedirs(self.run_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse()
            holder = {
                "pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc)
                .isoformat(timespec="seconds"),
                "command": " ".join(sys.argv) or sys.executable,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            self._fd = fd
        self._depth = 1

    def release(self):
        if not self._depth:
            return
        self._depth -= 1
        if self._depth or self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


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
        self.bad_what = None

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
            self.bad_step, self.bad_what = step, f"loss ({float(loss)})"
            self.model.stop_training = True
            return
        every = self.runner.checkpoint_every
        global_step = self.runner.steps_per_epoch * self.epoch + step
        if every and global_step % every == 0 and \
                step < self.runner.steps_per_epoch:
            bad = self.runner.save_state(self.epoch, step)
            if bad:
                self.bad_step = step
                self.bad_what = _describe_bad(bad)
                self.model.stop_training = True


def _describe_bad(bad):
    shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    return f"state: {len(bad)} non-finite array(s): {shown}"


class Runner:
    """Trains a recipe in a run directory, resumable at step granularity.

    The run directory holds `config.json` (the resolved recipe),
    `data.json` (dataset, class names, input shape, the training
    normalization statistics and which images were trained and scored on;
    see `data_record`), `history.csv`, `tensorboard/`,
    `checkpoints/{last,best}.weights.h5` (the student), `state.npz` +
    `state.json` (the full training state: student, learned loss parts,
    optimizer, metric accumulators, position in the data stream),
    `report.json` and `run.lock`.

    Each epoch's data stream is a fixed function of `(seed, epoch)`
    (`get_dataset(..., epoch=e)`), so a run killed mid-epoch and resumed
    from its last state reaches the same weights and metrics as an
    uninterrupted run with the same seed (with `deterministic=True`).

    Safety: one process writes a run directory at a time (`run.lock`; a
    second writer gets `RunDirectoryLockedError` naming the holder); a
    directory holding a run of another config is refused with the
    differing fields (`ConfigMismatchError`), and a resume on other data
    with the differing data fields (`DataMismatchError`); no state with
    NaN/inf values is ever written: a non-finite loss or state stops the
    run with `NonFiniteLossError`, naming the last good (finite) state.
    To continue that state with changed hyper-parameters (a lower learning
    rate, other loss weights, more epochs), start a *new* run directory
    from it with `resume_from=<old run_dir>` (its latest state) or
    `resume_from=<old run_dir>/epoch_state.json` (the state at the end of
    its last completed epoch, kept next to the latest one: a state taken
    while the loss was already diverging can be finite but bad); the
    fields of `FIXED_WHEN_RESUMING` must stay the same.

    Args:
        recipe: the `Recipe`.
        run_dir: the run directory (created).
        teacher: a trained teacher (else `recipe.teacher_weights`).
        checkpoint_every: also save the state every N training steps.
        deterministic: enable TF op determinism (identical metrics for a
            fixed seed on CPU).
        strategy: a `tf.distribute` strategy (TF backend); default: none.
        data_dir: overrides `recipe.data.data_dir` (recorded in
            `data.json`).
        resume_from: another run directory whose latest state this run
            starts from (when `run_dir` has no state of its own yet), or
            a state file of one (`.../epoch_state.json`); see
            `state_files`.
    """

    def __init__(self, recipe, run_dir, *, teacher=None, checkpoint_every=None,
                 deterministic=True, strategy=None, data_dir=None,
                 resume_from=None):
        if checkpoint_every is not None and (
                isinstance(checkpoint_every, bool)
                or not isinstance(checkpoint_every, (int, np.integer))
                or checkpoint_every < 1):
            raise ValueError(
                "checkpoint_every must be a positive integer or None. "
                f"Received: checkpoint_every={checkpoint_every!r}"
            )
        self.recipe = recipe
        self.run_dir = os.fspath(run_dir)
        self.teacher = teacher
        self.checkpoint_every = checkpoint_every
        self.deterministic = deterministic
        self.strategy = strategy
        self.data_dir = data_dir if data_dir is not None \
            else recipe.data.data_dir
        # Only the chief writes (multi-worker runs); others only read.
        self.chief = distribute.is_chief()
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        self.state_path = os.path.join(self.run_dir, "state.npz")
        self.meta_path = os.path.join(self.run_dir, "state.json")
        self.config_path = os.path.join(self.run_dir, CONFIG_FILE)
        self.data_path = os.path.join(self.run_dir, DATA_FILE)
        self._lock = RunLock(self.run_dir)
        self.resume_from = None
        self._source = None
        self.resumed_from = None
        self.resumed_at = None
        if resume_from is not None:
            self.resume_from = os.fspath(resume_from)
            self._source = state_files(self.resume_from)
            if os.path.realpath(self._source[0]) == os.path.realpath(
                    self.run_dir):
                raise ValueError(
                    "resume_from must be another run directory (running the "
                    "same config again resumes a run in place). Received: "
                    f"resume_from={self.resume_from!r}"
                )
        if self.chief:
            # Early, read-only checks; repeated under the lock in `run`.
            self._lock.probe()
            self._check_config()
            if self._source is not None and not self._has_state():
                self._check_resume_source()

    # -- setup ---------------------------------------------------------------
    def _has_state(self):
        return _state_exists((self.run_dir, self.state_path, self.meta_path))

    def _read_config(self, run_dir):
        from keras_semkd import configs

        path = os.path.join(run_dir, CONFIG_FILE)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            return configs.Recipe.from_json(text)
        except ValueError as e:
            raise ConfigMismatchError(
                f"{path} cannot be read as a recipe ({e}); the run directory "
                "is not usable for this run."
            ) from e

    def _check_config(self):
        """Refuses a run directory whose recorded run (with a state) is of
        a different config, listing the differing fields."""
        if not (os.path.exists(self.config_path) and self._has_state()):
            return
        old = self._read_config(self.run_dir)
        diff = old.diff(self.recipe)
        if diff:
            fixed = [k for k in diff if k in FIXED_WHEN_RESUMING
                     or k == "terms"]
            hint = (
                "; or continue its state with the changed config in a new "
                f"directory (Runner(..., resume_from={self.run_dir!r}); "
                "experiments/distill.py --run_dir=<new> "
                f"--resume_from={self.run_dir})" if not fixed else "")
            raise ConfigMismatchError(
                f"Run directory {self.run_dir!r} holds a run of a different "
                f"config ({len(diff)} field(s) differ: "
                f"{_format_diff(diff, 'recorded', 'given')}). Resume it with "
                f"the recorded config, or use a new directory{hint}."
            )

    def _check_resume_source(self):
        """The `resume_from` run exists, has a state and differs from this
        recipe only in fields that may change."""
        src = self.resume_from
        if not _state_exists(self._source):
            raise FileNotFoundError(
                f"resume_from={src!r} holds no training state "
                f"({self._source[1]} + {self._source[2]}): nothing to "
                "continue."
            )
        old = self._read_config(self._source[0])
        diff = old.diff(self.recipe)
        fixed = {k: v for k, v in diff.items()
                 if k in FIXED_WHEN_RESUMING or k == "terms"}
        if fixed:
            raise ConfigMismatchError(
                f"Cannot continue the state of {src!r} with these changes: "
                f"{_format_diff(fixed, 'recorded', 'given')}. These fields "
                "define the model, the data stream or the run's identity "
                f"({', '.join(FIXED_WHEN_RESUMING)}, the list of terms); "
                "start a new run instead."
            )
        return diff

    def lock(self):
        """The run directory's lock, as a (re-entrant) context manager:
        `run` takes it; scripts hold it around `run` and what they write
        into the directory afterwards (e.g. `student.keras`)."""
        if not self.chief:
            return contextlib.nullcontext()
        return self._lock

    def _datasets(self, epoch):
        cfg = self.recipe.data
        train_ds, info = data_lib.get_dataset(
            cfg.dataset, "train", cfg.batch_size, data_dir=self.data_dir,
            augment=cfg.augment, seed=self.recipe.seed,
            validation_split=cfg.validation_split,
            with_index=_with_index(self.recipe),
            split_seed=cfg.split_seed, epoch=epoch,
            normalization=self.train_info.normalization,
            **cfg.loader_kwargs(),
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
        # The training stream is built per epoch by `_datasets(epoch)` (a
        # fixed function of (seed, epoch), so a resumed epoch sees the same
        # batches); load_data's own train pipeline is lazy and left unused.
        _, eval_ds, train_info, eval_info, steps = load_data(
            recipe, self.data_dir)
        self.steps_per_epoch = steps
        self.train_info = train_info
        self.eval_info = eval_info
        # Multi-worker: each worker evaluates its share of every batch.
        self.eval_ds = distribute.prepare_dataset(eval_ds, self.strategy)
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

    def _check_data(self, record, run_dir, what):
        """Raises `DataMismatchError` when `run_dir`'s recorded data differ
        from `record` in a `DATA_IDENTITY` field."""
        path = os.path.join(run_dir, DATA_FILE)
        if not os.path.isfile(path):
            return  # written before data.json existed
        with open(path, encoding="utf-8") as f:
            old = _flatten(json.load(f))
        new = _flatten(record)
        diff = {k: (old.get(k), new.get(k)) for k in DATA_IDENTITY
                if old.get(k) != new.get(k)}
        if diff:
            shown = {k: ((f"{len(a)} names" if isinstance(a, list)
                          and len(a) > 12 else a),
                         (f"{len(b)} names" if isinstance(b, list)
                          and len(b) > 12 else b))
                     for k, (a, b) in diff.items()}
            raise DataMismatchError(
                f"{what} was trained on other data than this run would "
                f"resume on ({_format_diff(shown, 'recorded', 'now')}). "
                "Point data_dir at the data it was trained on, or start a "
                "new run."
            )

    # -- state -------------------------------------------------------------
    def _state_arrays(self):
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        variables = _state_variables(self.model)
        values = [keras.ops.convert_to_numpy(v) for v in variables]
        return variables, values

    def save_state(self, epoch, step, extra=None):
        """Saves the full training state at (epoch, step-in-epoch), after
        checking that every array is finite.

        Returns:
            `[]` when saved; else the names of the non-finite arrays (and
            nothing is written: the last good state stays in place).
        """
        variables, values = self._state_arrays()
        metrics = [keras.ops.convert_to_numpy(v)
                   for v in self.model.metrics_variables] if step else []
        # Every worker reads the values above: under a multi-worker strategy
        # reading a metric (sync-on-read) variable is a collective that
        # needs all workers. Only the chief writes.
        bad = _non_finite(values, variables) + [
            f"metric {n}" for n in _non_finite(metrics)]
        if bad or not self.chief:
            return bad
        arrays = {f"v{i}": a for i, a in enumerate(values)}
        arrays.update({f"m{i}": a for i, a in enumerate(metrics)})

        def write_npz(p):
            with open(p, "wb") as f:
                np.savez(f, **arrays)

        _atomic_write(self.state_path, write_npz)
        meta = {"epoch": epoch, "step": step, "num_variables": len(values),
                "num_metric_variables": len(metrics),
                "best_top1": self.best_top1, "history": self.history,
                "resumed_from": self.resumed_from}
        meta.update(extra or {})
        _write_text(self.meta_path, json.dumps(meta, indent=1))
        if step == 0:
            # Keep the end-of-epoch state next to the latest one (a hard
            # link: no copy; the next save replaces state.* by new files).
            for src in (self.state_path, self.meta_path):
                stem, ext = os.path.splitext(src)
                dst = os.path.join(os.path.dirname(stem), EPOCH_STATE + ext)
                _atomic_write(dst, lambda p, src=src: _link_or_copy(src, p))
        return []

    def _load_state(self, files):
        run_dir, state_path, meta_path = files
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        with np.load(state_path) as data:
            values = [data[f"v{i}"] for i in range(meta["num_variables"])]
            metrics = [data[f"m{i}"]
                       for i in range(meta["num_metric_variables"])]
        variables = _state_variables(self.model)
        if len(variables) != len(values) or any(
            tuple(v.shape) != a.shape for v, a in zip(variables, values)
        ):
            raise ValueError(
                f"The state in {run_dir!r} does not fit this model "
                f"({len(values)} saved vs {len(variables)} variables)."
            )
        bad = _non_finite(values, variables) + _non_finite(metrics)
        if bad:
            raise NonFiniteLossError(
                f"The state in {state_path!r} holds non-finite values "
                f"({_describe_bad(bad)}); it cannot be trained from (it was "
                "written by a version that did not check). Delete the run "
                "directory, or start a new run."
            )
        for v, a in zip(variables, values):
            v.assign(a)
        return meta, (metrics or None)

    def _good_states(self):
        """`[(json path, epoch, step)]` of the states one can continue
        from: this run's latest and end-of-epoch states, else the
        `resume_from` state it started from."""
        own = [(self.run_dir, self.state_path, self.meta_path),
               state_files(os.path.join(self.run_dir,
                                        EPOCH_STATE + ".json"))]
        found = []
        for files in own if self._has_state() else [self._source]:
            if files is not None and _state_exists(files):
                with open(files[2], encoding="utf-8") as f:
                    meta = json.load(f)
                entry = (files[2], meta["epoch"], meta["step"])
                if not found or found[0][1:] != entry[1:]:
                    found.append(entry)
        return found

    def _non_finite_error(self, epoch, step, what):
        good = self._good_states()

        def when(e, s):
            return f"epoch {e + 1}, step {s}" if s else f"end of epoch {e}"

        if not good:
            where = (
                "No training state had been saved yet (the first is saved "
                + (f"after {self.checkpoint_every} steps or " if
                   self.checkpoint_every else "")
                + "at the end of the first epoch), so there is nothing to "
                "resume: start again with changed hyper-parameters (e.g. a "
                "lower learning rate or loss weight)."
            )
        else:
            path, e, s = good[0]
            where = (
                f"Last good state (checked finite): {when(e, s)}, in "
                f"{path[:-len('.json')]}.npz (+ .json)."
            )
            if len(good) > 1:
                where += (
                    f" The state at the {when(*good[1][1:])} is kept in "
                    f"{good[1][0]} (+ .npz): a state taken while the loss "
                    "was already diverging can be finite but bad."
                )
            where += (
                " Running the same config again resumes from the latest "
                "state and meets the same failure; to continue with changed "
                "hyper-parameters (e.g. a lower learning rate), start a new "
                "run directory from a state: Runner(recipe, new_run_dir, "
                f"resume_from={path!r}), or experiments/distill.py (or "
                f"train_teacher.py) --run_dir=<new> --resume_from={path}."
            )
        return NonFiniteLossError(
            f"The training {what} became non-finite at epoch {epoch + 1}, "
            f"step {step}; nothing non-finite was written. {where}"
        )

    def restore(self):
        """Builds the models and loads this run directory's latest state,
        without training: for measuring a finished or interrupted run (its
        gradients, its predictions) exactly as it stands.

        Returns the compiled `Distiller`; `self.student` is its student.
        Raises `FileNotFoundError` when the directory holds no state and
        `ValueError` when its config differs from this recipe.
        """
        if not self._has_state():
            raise FileNotFoundError(
                f"{self.run_dir!r} holds no training state to restore.")
        self._check_config()
        self._build()
        meta, _ = self._load_state(
            (self.run_dir, self.state_path, self.meta_path))
        self.best_top1 = meta.get("best_top1")
        self.history = meta.get("history", [])
        return self.model

    # -- the loop ------------------------------------------------------------
    def run(self, verbose=1, callbacks=None):
        """Trains to `recipe.epochs`, resuming from the run directory (or,
        the first time, from `resume_from`).

        Returns the report dict (also written to `report.json`).
        """
        # Keras 3 needs two fixes to fit under multi-worker strategies
        # (a no-op for any other strategy).
        with self.lock(), distribute.multi_worker_fixes(self.strategy):
            return self._run(verbose, callbacks)

    def _run(self, verbose, callbacks):
        self.best_top1, self.history = None, []
        resume_diff = None
        if self.chief:
            self._check_config()
            if self._source is not None and not self._has_state():
                resume_diff = self._check_resume_source()
        # Data, models and teacher weights are loaded and checked before
        # anything is written into the run directory.
        self._build()
        record = data_record(self.recipe, self.train_info, self.eval_info,
                             self.data_dir)
        own = (self.run_dir, self.state_path, self.meta_path)
        source = own if self._has_state() else (
            self._source if self._source is not None
            and _state_exists(self._source) else None)
        if self.chief:
            if source is not None:
                self._check_data(record, source[0],
                                 f"The run in {source[0]!r}")
            os.makedirs(self.ckpt_dir, exist_ok=True)
            _write_text(self.config_path, self.recipe.to_json())
            _write_text(self.data_path, json.dumps(record, indent=1))
        epoch, step, metrics = 0, 0, None
        if source is not None:
            meta, metrics = self._load_state(source)
            epoch, step = meta["epoch"], meta["step"]
            self.best_top1 = meta.get("best_top1")
            self.history = meta.get("history", [])
            self.resumed_from = meta.get("resumed_from")
            if source != own:
                self.resumed_from = {
                    "run_dir": source[0], "state": source[2],
                    "epoch": epoch, "step": step,
                    "changed": {k: list(v) for k, v in
                                (resume_diff or {}).items()},
                }
                if self.chief:
                    for name in ("best.weights.h5", "last.weights.h5"):
                        src = os.path.join(source[0], "checkpoints", name)
                        if os.path.exists(src):
                            shutil.copyfile(src,
                                            os.path.join(self.ckpt_dir, name))
                logging.info("Starting %s from the state %s (epoch %d, "
                             "step %d); changed: %s", self.run_dir,
                             source[2], epoch, step, resume_diff)
        # Multi-worker: all workers must resume from the same point.
        distribute.check_same_on_all_workers(
            self.strategy, (epoch, step), "the resume point (epoch, step)")
        if (epoch or step) and source == own:
            logging.info("Resuming %s at epoch %d, step %d.", self.run_dir,
                         epoch, step)
        # Where this process started (None: from scratch).
        self.resumed_at = ({"epoch": epoch, "step": step}
                           if epoch or step else None)
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
                raise self._non_finite_error(e, control.bad_step,
                                             control.bad_what)
            # The end-of-epoch state is checked before anything of this
            # epoch (history, weights, state) is written.
            variables, values = self._state_arrays()
            bad = _non_finite(values, variables)
            if bad:
                raise self._non_finite_error(
                    e, self.steps_per_epoch, _describe_bad(bad))
            row = {k: float(v[-1]) for k, v in hist.history.items()}
            row["epoch"] = e + 1
            row["seconds"] = time.time() - epoch_start
            # The steps `seconds` covers: fewer than an epoch's when the
            # epoch was resumed mid-way.
            row["steps"] = self.steps_per_epoch - first
            row["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))
            self.history.append(row)
            top1 = row.get("val_top1")
            improved = top1 is not None and math.isfinite(top1) and (
                self.best_top1 is None or top1 > self.best_top1)
            if improved:
                self.best_top1 = top1
            # Not keras.callbacks.CSVLogger / ModelCheckpoint: fit runs one
            # epoch per call (a resumed epoch skips its done steps), and
            # these files are written only after the epoch's state is
            # checked finite above. CSVLogger would append its row at
            # on_epoch_end (before that check; twice for an epoch resumed
            # mid-way), fix its columns at its first epoch and miss the
            # `seconds` / `learning_rate` added here and the rows carried
            # over from a resumed run; ModelCheckpoint saves the model given
            # to fit (the Distiller, not the student) and forgets its best
            # value at every fit call.
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
        _write_text(os.path.join(self.run_dir, "history.csv"),
                    "\n".join(lines) + "\n")

    def _report(self, seconds):
        last = self.history[-1] if self.history else {}
        report = {
            "recipe": self.recipe.to_dict(),
            "last": {"top1": last.get("val_top1"),
                     "top5": last.get("val_top5")},
            "best_top1": self.best_top1,
            "epochs_done": len(self.history),
            "history": self.history,
            # Which images top1/top5 are measured on (split, carved or
            # not, subset or not).
            "eval": self.eval_info.split_record(),
            "data": _info_dict(self.train_info),
            "resumed_from": self.resumed_from,
            "resumed_at": self.resumed_at,
            "seconds_this_session": seconds,
        }
        if self.chief:
            _write_text(os.path.join(self.run_dir, "report.json"),
                        json.dumps(report, indent=2, default=str))
        return report


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train_quick_teacher(recipe, epochs, weights_path, run_dir, verbose=1,
                        overwrite=False, **runner_kwargs):
    """The one quick-teacher routine of the scripts: trains
    `recipe.teacher` alone (`configs.recipes.quick_teacher_recipe`: the same
    data, classes and seed, `epochs` epochs) in its own resumable run
    directory `run_dir`, and writes its last weights to `weights_path`.

    `overwrite=True` starts `run_dir` over. Returns the teacher run's
    report (`report["last"]["top1"]` on `report["eval"]`).
    """
    from keras_semkd.configs import recipes as recipes_lib

    if recipe.teacher is None:
        raise ValueError(
            f"Recipe {recipe.name!r} has no teacher to train.")
    if overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    teacher_recipe = recipes_lib.quick_teacher_recipe(recipe, epochs)
    logging.info("No teacher weights: training a quick %s teacher for %d "
                 "epoch(s) in %s first.", recipe.teacher, epochs, run_dir)
    report = Runner(teacher_recipe, run_dir, **runner_kwargs).run(
        verbose=verbose)
    os.makedirs(os.path.dirname(os.path.abspath(weights_path)),
                exist_ok=True)
    shutil.copyfile(os.path.join(run_dir, "checkpoints", "last.weights.h5"),
                    weights_path)
    return report
