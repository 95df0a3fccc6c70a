"""Student-only SavedModel export for TF Serving, and its reload check.

`export_student` writes the student of a distillation run (never the
teacher, the distillation heads or the loss state) as a SavedModel that
TensorFlow Serving can load as is:

```
<export_root>/
  models.config                  # ModelServerConfig (text), every model here
  <name>/
    1/                           # one version = one complete SavedModel
      saved_model.pb
      variables/
      assets.extra/export.json   # class names, normalization, top_k, recipe
    2/
    student-1.keras              # the Keras student behind version 1
    student-2.keras
```

Its `serving_default` signature takes raw `uint8` images `(None, H, W, 3)`
(input name `images`), normalizes them in the graph exactly like the
training pipeline (`x * scale + offset`, i.e. `(x / 255 - mean) / std`),
runs the student and returns

* `probabilities`: float32 `(None, num_classes)`, the softmax of the logits;
* `top_k_classes`: int32 `(None, k)`, class ids by decreasing probability;
* `top_k_scores`: float32 `(None, k)`, their probabilities;
* `top_k_names`: string `(None, k)`, their class names (a constant lookup).

The signature's image size is enforced in the graph: an image of another
size than the student was built for (e.g. 64x64 for a 32x32 student) is
refused with an `InvalidArgumentError`, by TF Serving too, instead of
being scored.

A version appears atomically: it is written into a hidden temporary folder
inside `<export_root>/<name>/` (TF Serving only loads folders whose name is
an integer) and then renamed into place, so a server watching the folder
never sees a partial version; a failed export leaves nothing behind.  An
export killed outside Python's control (`kill -9`) leaves its temporary
folder; each export holds an advisory lock on its temporaries, and the
next export (or `clean_stale_temporaries`) removes those no live export
holds.

`reload_check` loads the SavedModel back with `tf.saved_model.load` and
compares its signature with the Keras student on the same images, under
the normalization it is given -- pass the statistics the student was
*trained* under (a run's `data.json`), so that an export built with other
statistics is caught rather than compared with itself.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_semkd import data as data_lib
from keras_semkd.data.normalization import Normalization
from keras_semkd.data.normalization import get_normalization
from keras_semkd.distillers import Distiller

try:  # POSIX: serialize models.config rewrites between processes.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "top_k_classes", "top_k_scores",
                "top_k_names")
METADATA_PATH = os.path.join("assets.extra", "export.json")
MODELS_CONFIG = "models.config"
DEFAULT_SERVING_BASE_PATH = "/models"

_TMP_PREFIX = ".tmp-export-"
# `tempfile` creates private (0700 / 0600) entries; a model server running
# as another user must be able to read what is published.
_DIR_MODE = 0o755
_FILE_MODE = 0o644
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportMismatchError(ValueError):
    """The reloaded SavedModel disagrees with the Keras model."""


@dataclasses.dataclass(frozen=True)
class ServingExport:
    """Where `export_student` put one version.

    Attributes:
        name: the model name (TF Serving's `model_spec.name`).
        version: the integer version.
        path: the version folder holding `saved_model.pb`.
        keras_path: the student saved as a `.keras` file (outside the
            version folder, so TF Serving ignores it).
        metadata_path: the JSON sidecar inside the version folder.
        config_path: the rewritten `models.config`.
        metadata: the sidecar's content.
    """

    name: str
    version: int
    path: str
    keras_path: str
    metadata_path: str
    config_path: str
    metadata: dict = dataclasses.field(repr=False)


# ---------------------------------------------------------------------------
# Inputs: which model, which classes, which normalization
# ---------------------------------------------------------------------------


def load_student(model_or_path):
    """Returns the student `keras.Model` to export.

    Args:
        model_or_path: a student `keras.Model`; a `Distiller` (its
            `.student` is taken, the teacher and the distillation terms are
            left out); or the path of a `.keras` file holding either (trained
            under any backend).

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: the argument is none of the above.
    """
    obj = model_or_path
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No model file at {path!r}. Expected a `.keras` file saved "
                "by `model.save(...)` (e.g. runs/<recipe>/student.keras)."
            )
        # Importing the model zoo and the distillers registers every
        # keras_semkd serializable the file may name.
        from keras_semkd import models  # noqa: F401

        obj = keras.saving.load_model(path, compile=False)
    if isinstance(obj, Distiller):
        obj = obj.student
    if not isinstance(obj, keras.Model):
        raise TypeError(
            "Expected a student keras.Model, a Distiller or a path to a "
            f"`.keras` file. Received: {model_or_path!r} of type "
            f"{type(model_or_path).__name__}"
        )
    return obj


def default_class_names(dataset, num_classes):
    """The class names of a known dataset, matched to the number of logits.

    `cifar100` gives the 100 fine names (or the 20 coarse ones for a 20-way
    model), `cinic10` its 10 names, `synthetic` `class_0`, `class_1`, ...

    Raises:
        ValueError: no names are known for this dataset and class count.
    """
    candidates = {
        "cifar100": (data_lib.FINE_LABEL_NAMES, data_lib.COARSE_LABEL_NAMES),
        "cinic10": (data_lib.CINIC10_CLASSES,),
    }.get(dataset, ())
    for names in candidates:
        if len(names) == num_classes:
            return tuple(names)
    if dataset == "synthetic":
        return tuple(f"class_{c}" for c in range(num_classes))
    raise ValueError(
        f"No class names known for dataset {dataset!r} with {num_classes} "
        "classes; pass class_names=[...] (one name per logit). Received: "
        f"dataset={dataset!r}, num_classes={num_classes}"
    )


def _resolve_normalization(normalization, dataset):
    if normalization is None:
        return get_normalization(dataset)
    if isinstance(normalization, Normalization):
        return normalization
    if isinstance(normalization, str):
        return get_normalization(normalization)
    if isinstance(normalization, dict):
        return Normalization(mean=normalization["mean"],
                             std=normalization["std"])
    try:
        mean, std = normalization
    except (TypeError, ValueError):
        raise TypeError(
            "normalization must be None, a registered dataset name, a "
            "Normalization, a {'mean', 'std'} dict or a (mean, std) pair. "
            f"Received: normalization={normalization!r}"
        ) from None
    return Normalization(mean=mean, std=std)


def _logits_tensor(outputs, logits_key):
    if isinstance(outputs, dict):
        if logits_key not in outputs:
            raise ValueError(
                f"The student has no {logits_key!r} output. Available "
                f"outputs: {sorted(outputs)}"
            )
        return outputs[logits_key]
    return outputs


def _model_signature(student, logits_key):
    """Returns `(image_shape, num_classes)` of a student model."""
    try:
        input_shape = tuple(student.input_shape)
    except (AttributeError, ValueError) as e:
        raise ValueError(
            f"The student {student.name!r} has no single image input: "
            f"build it (or use a functional model) first. Error: {e}"
        ) from e
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise ValueError(
            "The student must take channels-last RGB images (None, H, W, "
            f"3). Received: input_shape={input_shape}"
        )
    spec = keras.KerasTensor(input_shape if input_shape[0] is None
                             else (None,) + input_shape[1:])
    logits = _logits_tensor(student.compute_output_spec(spec), logits_key)
    if len(logits.shape) != 2 or logits.shape[-1] is None:
        raise ValueError(
            "The student's logits must have shape (batch, num_classes). "
            f"Received: logits shape {tuple(logits.shape)}"
        )
    return tuple(input_shape[1:]), int(logits.shape[-1])


# ---------------------------------------------------------------------------
# The serving graph
# ---------------------------------------------------------------------------


class _ServingModule(tf.Module):
    """What the SavedModel holds: the student's variables and one function.

    The variables are tracked as a plain list (as Keras' own
    `ExportArchive` does) rather than through the Keras model object, so
    the SavedModel holds exactly the student's weights and nothing else.
    """

    def __init__(self, serve, student_variables):
        super().__init__(name="keras_semkd_serving")
        self.student_variables = list(student_variables)
        self.serve = serve


def _build_serving_function(student, image_shape, normalization,
                            class_names, top_k, logits_key):
    scale = np.asarray(normalization.scale, np.float32)
    offset = np.asarray(normalization.offset, np.float32)
    names = np.asarray(class_names, dtype=object)

    @tf.function(input_signature=[
        tf.TensorSpec((None,) + tuple(image_shape), tf.uint8,
                      name=INPUT_NAME)
    ])
    def serve(images):
        # A signature called with another image size is not checked by
        # TF (the concrete function runs on any shape the ops accept), so
        # the graph checks it: refuse, never score a resized problem.
        images = tf.ensure_shape(images, (None,) + tuple(image_shape),
                                 name="check_image_shape")
        # Same fused transform as keras_semkd.data.augment.normalize:
        # x * 1/(255 std) - mean/std == (x / 255 - mean) / std.
        x = tf.cast(images, tf.float32) * tf.constant(scale) \
            + tf.constant(offset)
        outputs = student(x, training=False)
        logits = tf.cast(_logits_tensor(outputs, logits_key), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=top_k)
        classes = tf.cast(classes, tf.int32)
        top_names = tf.gather(tf.constant(names, dtype=tf.string), classes)
        return {
            "probabilities": tf.identity(probabilities, name="probabilities"),
            "top_k_classes": tf.identity(classes, name="top_k_classes"),
            "top_k_scores": tf.identity(scores, name="top_k_scores"),
            "top_k_names": tf.identity(top_names, name="top_k_names"),
        }

    return serve


# ---------------------------------------------------------------------------
# Files: versions, atomic moves, models.config
# ---------------------------------------------------------------------------


def _check_name(name):
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            "The model name must start with a letter or digit and contain "
            "only letters, digits, '_', '.' and '-' (it is a folder name and "
            f"TF Serving's model_spec.name). Received: name={name!r}"
        )


def list_versions(model_dir):
    """The integer versions (complete SavedModels) under `model_dir`."""
    if not os.path.isdir(model_dir):
        return []
    versions = []
    for entry in os.listdir(model_dir):
        if entry.isdigit() and os.path.isfile(
            os.path.join(model_dir, entry, "saved_model.pb")
        ):
            versions.append(int(entry))
    return sorted(versions)


def _next_version(model_dir):
    taken = [int(e) for e in os.listdir(model_dir) if e.isdigit()]
    return max(taken, default=0) + 1


def _hold(path):
    """Opens `path` (a file or folder) and takes an exclusive advisory
    lock on it; returns the descriptor (closing it releases the lock)."""
    fd = os.open(path, os.O_RDONLY)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _new_temporary(model_dir, suffix=None):
    """A held (locked) temporary folder, or file with `suffix`, inside
    `model_dir`: `(path, fd)`. Created under `model_dir`'s lock, so a
    concurrent clean-up never sees it unheld."""
    with _locked(model_dir):
        if suffix is None:
            path = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=model_dir)
        else:
            fd, path = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=suffix,
                                        dir=model_dir)
            os.close(fd)
        return path, _hold(path)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def clean_stale_temporaries(model_dir):
    """Removes the temporaries (`.tmp-export-*`) of exports that died
    without cleaning up (e.g. killed), i.e. those no live export holds.

    Returns:
        The removed paths.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return []
    removed = []
    with _locked(model_dir):
        for entry in sorted(os.listdir(model_dir)):
            if not entry.startswith(_TMP_PREFIX):
                continue
            path = os.path.join(model_dir, entry)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live export's
                _remove(path)
                removed.append(path)
            finally:
                os.close(fd)
    return removed


@contextlib.contextmanager
def _locked(directory):
    """An exclusive advisory lock on `directory` (no lock file needed)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_models_config(export_root,
                        serving_base_path=DEFAULT_SERVING_BASE_PATH):
    """(Re)writes `<export_root>/models.config` for `tensorflow_model_server`.

    Lists every model folder under `export_root` holding at least one
    complete version, in TF Serving's `ModelServerConfig` text format, with
    `model_platform: "tensorflow"`.  The file is regenerated from what is
    on disk (hand edits are lost) and replaced atomically.

    Args:
        export_root: the folder holding one sub-folder per model.
        serving_base_path: where `export_root` is seen by the server;
            `base_path` of model `m` is `<serving_base_path>/m`.  The default
            `/models` matches the `tensorflow/serving` Docker image mounted
            with `target=/models`.  `None` writes this machine's absolute
            paths (for a server running here).

    Returns:
        The path of the written file.
    """
    export_root = os.path.abspath(os.fspath(export_root))
    os.makedirs(export_root, exist_ok=True)
    if serving_base_path is None:
        base = export_root
    else:
        base = str(serving_base_path).rstrip("/") or "/"
    with _locked(export_root):
        # A rewrite killed mid-way left its temporary (we hold the lock, so
        # no rewrite is in progress).
        for entry in os.listdir(export_root):
            if entry.startswith(".models.config."):
                _remove(os.path.join(export_root, entry))
        models = sorted(
            entry for entry in os.listdir(export_root)
            if _NAME_RE.match(entry)
            and list_versions(os.path.join(export_root, entry))
        )
        lines = [
            "# TF Serving ModelServerConfig, written by keras_semkd.export.",
            "# Regenerated from the folders next to it on every export.",
            "model_config_list {",
        ]
        for name in models:
            lines += [
                "  config {",
                f"    name: {_quote(name)}",
                f"    base_path: {_quote(base.rstrip('/') + '/' + name)}",
                '    model_platform: "tensorflow"',
                "  }",
            ]
        lines.append("}")
        path = os.path.join(export_root, MODELS_CONFIG)
        fd, tmp = tempfile.mkstemp(prefix=".models.config.", dir=export_root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return path


def _to_jsonable(value):
    if value is None or isinstance(value, (str, int, float, bool, list,
                                            dict)):
        return value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(
        "recipe must be a Recipe, a dict or None. "
        f"Received: recipe={value!r} of type {type(value).__name__}"
    )


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


def export_student(model_or_path, export_root, name, version=None, *,
                   dataset="cifar100", class_names=None, top_k=5,
                   normalization=None, recipe=None, overwrite=False,
                   logits_key="logits", source=None,
                   serving_base_path=DEFAULT_SERVING_BASE_PATH,
                   image_shape=None, run_data=None):
    """Exports the student as a TF Serving SavedModel version.

    Writes `<export_root>/<name>/<version>/` atomically (see the module
    docstring), the student as `<export_root>/<name>/student-<version>.keras`
    and rewrites `<export_root>/models.config`.

    Args:
        model_or_path: the student `keras.Model`, a `Distiller` (only its
            `.student` is exported) or a `.keras` path of either.
        export_root: the folder served by TF Serving (e.g. `saved_models`).
        name: the model name: folder name and TF Serving's
            `model_spec.name`.
        version: non-negative integer; `None` takes the next free integer
            (1 for a new model).
        dataset: registered dataset whose normalization and class names the
            signature uses (`"cifar100"`, `"cinic10"`, `"synthetic"`).
        class_names: one name per logit; default: the dataset's.
        top_k: how many classes `top_k_*` return (1..num_classes).
        normalization: overrides the dataset's normalization: a registered
            name, a `Normalization`, a `{"mean", "std"}` dict or a
            `(mean, std)` pair (needed for `image_folder` data).
            Give the statistics the student was trained under.
        recipe: the `Recipe` (or its dict) that trained the student, stored
            in the sidecar JSON.
        overwrite: replace an existing `version`; otherwise refuse.
        logits_key: the output holding the logits when the student returns
            a dict.
        source: where the student came from, for the sidecar JSON; default:
            the path, or the type of the given object.
        serving_base_path: where the server sees `export_root` (for
            `models.config`); see `write_models_config`.
        image_shape: `(height, width, channels)` the signature takes, for
            a student whose input has unknown spatial dimensions; must
            agree with the student's known ones. Default: the student's.
        run_data: the data record of the run that trained the student
            (`keras_semkd.training.read_run_data(run_dir)`): its class
            names, training normalization and image shape are used (and
            must agree with `class_names` / `normalization` /
            `image_shape` when those are given too), and it is stored in
            the sidecar JSON.

    Returns:
        A `ServingExport`.

    Raises:
        RuntimeError: the Keras backend is not TensorFlow.
        FileExistsError: `version` exists and `overwrite` is `False`.
        ValueError: bad name, version, top_k or class names.
    """
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "export_student builds a TensorFlow graph and needs the "
            "TensorFlow backend (KERAS_BACKEND=tensorflow); a student "
            "trained under JAX exports from its `.keras` file. Received: "
            f"backend={keras.backend.backend()!r}"
        )
    _check_name(name)
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, (int, np.integer))
        or version < 0
    ):
        raise ValueError(
            f"version must be a non-negative integer or None. Received: "
            f"version={version!r}"
        )
    if source is None:
        source = (os.fspath(model_or_path)
                  if isinstance(model_or_path, (str, os.PathLike))
                  else type(model_or_path).__name__)
    student = load_student(model_or_path)
    model_shape, num_classes = _model_signature(student, logits_key)
    if run_data is not None:
        dataset = run_data.get("dataset", dataset)
        run_names = tuple(run_data["class_names"])
        if class_names is not None and tuple(class_names) != run_names:
            raise ValueError(
                "class_names differ from the run's (its data.json): "
                f"{list(class_names)} vs {list(run_names)}."
            )
        class_names = run_names
        run_norm = Normalization(mean=run_data["normalization"]["mean"],
                                 std=run_data["normalization"]["std"])
        if normalization is not None and _resolve_normalization(
                normalization, dataset) != run_norm:
            raise ValueError(
                "normalization differs from the statistics the run trained "
                f"under (its data.json): {normalization} vs {run_norm}."
            )
        normalization = run_norm
        if image_shape is None and run_data.get("input_shape"):
            image_shape = tuple(run_data["input_shape"])
    image_shape = _check_image_shape(model_shape, image_shape, student)
    if class_names is None:
        class_names = default_class_names(dataset, num_classes)
    class_names = tuple(str(c) for c in class_names)
    if len(class_names) != num_classes:
        raise ValueError(
            f"Expected {num_classes} class names (one per logit of "
            f"{student.name!r}). Received: {len(class_names)} names"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) \
            or not 1 <= top_k <= num_classes:
        raise ValueError(
            f"top_k must be an integer in [1, {num_classes}]. "
            f"Received: top_k={top_k!r}"
        )
    top_k = int(top_k)
    norm = _resolve_normalization(normalization, dataset)
    if len(norm.mean) != image_shape[-1]:
        raise ValueError(
            f"The normalization has {len(norm.mean)} channels but the "
            f"student takes {image_shape[-1]}. Received: {norm}"
        )
    recipe = _to_jsonable(recipe)

    export_root = os.path.abspath(os.fspath(export_root))
    model_dir = os.path.join(export_root, name)
    os.makedirs(model_dir, exist_ok=True)
    clean_stale_temporaries(model_dir)

    serve = _build_serving_function(student, image_shape, norm, class_names,
                                    top_k, logits_key)
    module = _ServingModule(serve, student.variables)
    tmp_dir, tmp_dir_fd = _new_temporary(model_dir)
    tmp_keras, tmp_keras_fd = None, None
    try:
        os.chmod(tmp_dir, _DIR_MODE)
        tf.saved_model.save(module, tmp_dir,
                            signatures={SIGNATURE_NAME: module.serve})
        metadata = {
            "format": "keras_semkd.export/1",
            "name": name,
            "created": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "student": student.name,
            "num_parameters": int(sum(
                int(np.prod(v.shape)) for v in student.variables)),
            "signature": {
                "name": SIGNATURE_NAME,
                "inputs": {INPUT_NAME: {
                    "dtype": "uint8",
                    "shape": [None] + list(image_shape)}},
                "outputs": {
                    "probabilities": {"dtype": "float32",
                                      "shape": [None, num_classes]},
                    "top_k_classes": {"dtype": "int32",
                                      "shape": [None, top_k]},
                    "top_k_scores": {"dtype": "float32",
                                     "shape": [None, top_k]},
                    "top_k_names": {"dtype": "string",
                                    "shape": [None, top_k]},
                },
            },
            "dataset": dataset,
            "num_classes": num_classes,
            "class_names": list(class_names),
            "top_k": top_k,
            "normalization": {
                "mean": list(norm.mean), "std": list(norm.std),
                "scale": list(norm.scale), "offset": list(norm.offset),
                "formula": "(uint8 / 255 - mean) / std",
            },
            "recipe": recipe,
            "run_data": run_data,
            "versions": {"keras": keras.__version__,
                         "tensorflow": tf.__version__},
        }
        meta_dir = os.path.join(tmp_dir, os.path.dirname(METADATA_PATH))
        os.makedirs(meta_dir, exist_ok=True)
        tmp_keras, tmp_keras_fd = _new_temporary(model_dir, suffix=".keras")
        student.save(tmp_keras)
        os.chmod(tmp_keras, _FILE_MODE)
        version = _place_version(model_dir, tmp_dir, version, overwrite,
                                 metadata, meta_dir)
        tmp_dir = None  # now the version folder
        keras_path = os.path.join(model_dir, f"student-{version}.keras")
        os.replace(tmp_keras, keras_path)
        tmp_keras = None
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if tmp_keras is not None and os.path.exists(tmp_keras):
            os.remove(tmp_keras)
        for fd in (tmp_dir_fd, tmp_keras_fd):
            if fd is not None:
                os.close(fd)
    config_path = write_models_config(export_root, serving_base_path)
    path = os.path.join(model_dir, str(version))
    return ServingExport(
        name=name, version=version, path=path, keras_path=keras_path,
        metadata_path=os.path.join(path, METADATA_PATH),
        config_path=config_path, metadata=metadata,
    )


def _check_image_shape(model_shape, image_shape, student):
    """The signature's `(H, W, C)`: the student's, with unknown dimensions
    taken from `image_shape`."""
    if image_shape is None:
        return tuple(model_shape)
    try:
        image_shape = tuple(int(d) for d in image_shape)
    except (TypeError, ValueError):
        raise ValueError(
            "image_shape must be (height, width, channels) integers. "
            f"Received: image_shape={image_shape!r}"
        ) from None
    if len(image_shape) != len(model_shape) or any(
            m is not None and m != d for m, d in zip(model_shape,
                                                      image_shape)):
        raise ValueError(
            f"image_shape {image_shape} does not fit the student "
            f"{student.name!r}, built for {tuple(model_shape)} images. "
            f"Received: image_shape={image_shape}"
        )
    return image_shape


def _place_version(model_dir, tmp_dir, version, overwrite, metadata,
                   meta_dir):
    """Renames the finished `tmp_dir` to its version folder; returns it."""
    with _locked(model_dir):
        if version is None:
            version = _next_version(model_dir)
        version = int(version)
        target = os.path.join(model_dir, str(version))
        metadata["version"] = version
        metadata["keras_file"] = f"../student-{version}.keras"
        with open(os.path.join(meta_dir, os.path.basename(METADATA_PATH)),
                  "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, sort_keys=True, default=str)
        old = None
        if os.path.lexists(target):
            if not overwrite:
                raise FileExistsError(
                    f"Version {version} of {os.path.basename(model_dir)!r} "
                    f"already exists at {target!r}; pass overwrite=True or "
                    "another version (None takes the next one). Received: "
                    f"version={version}"
                )
            # Move the old version aside (TF Serving ignores dot-folders),
            # put the new one in, then delete the old one.
            old = tempfile.mkdtemp(prefix=_TMP_PREFIX + "old-", dir=model_dir)
            os.rename(target, os.path.join(old, "v"))
        os.rename(tmp_dir, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return version


# ---------------------------------------------------------------------------
# Reload check
# ---------------------------------------------------------------------------


def read_metadata(export_dir):
    """Returns the sidecar JSON of an exported version folder."""
    path = os.path.join(os.fspath(export_dir), METADATA_PATH)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No export metadata at {path!r}: is {export_dir!r} a version "
            "folder written by keras_semkd.export.export_student?"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def keras_probabilities(model, images, normalization, logits_key="logits"):
    """Softmax of the Keras model on normalized uint8 `images` (NumPy)."""
    x = normalization.apply_numpy(np.asarray(images))
    logits = _logits_tensor(model(x, training=False), logits_key)
    logits = keras.ops.cast(logits, "float32")
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))


def reload_check(export_dir, model, images, *, atol=1e-5,
                 normalization=None, logits_key="logits"):
    """Reloads an exported version and checks it against the Keras model.

    Runs the `serving_default` signature of `tf.saved_model.load(export_dir)`
    on `images` and compares `probabilities` (and `top_k_scores`) with the
    softmax of `model`'s logits on the same images normalized with the
    exported normalization.

    Args:
        export_dir: a version folder (`<export_root>/<name>/<version>`).
        model: the Keras student (or a `Distiller`, or a `.keras` path).
        images: uint8 array `(N, H, W, 3)`.
        atol: largest accepted absolute difference.
        normalization: the statistics the model was *trained* under (same
            forms as in `export_student`; e.g. from the run's
            `data.json`): the Keras side is computed under them, and an
            export built with other statistics is refused. `None` uses
            the export's own metadata, which only checks the export
            against itself.
        logits_key: the logits output of a dict-output model.

    Returns:
        The largest absolute difference (float).

    Raises:
        ExportMismatchError: the difference exceeds `atol`, or the output
            shapes or top-k classes disagree.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            "images must be a uint8 (N, H, W, C) array. Received: "
            f"dtype={images.dtype}, shape={images.shape}"
        )
    meta = read_metadata(export_dir).get("normalization", {})
    exported = Normalization(mean=meta["mean"], std=meta["std"])
    if normalization is None:
        norm = exported
    else:
        norm = _resolve_normalization(normalization, None)
        if not np.allclose(norm.mean, exported.mean, rtol=0, atol=1e-7) \
                or not np.allclose(norm.std, exported.std, rtol=0,
                                   atol=1e-7):
            raise ExportMismatchError(
                f"The SavedModel at {export_dir!r} normalizes with mean "
                f"{list(exported.mean)}, std {list(exported.std)}, but the "
                f"model was trained under mean {list(norm.mean)}, std "
                f"{list(norm.std)}: its predictions would differ from the "
                "trained model's."
            )
    model = load_student(model)
    loaded = tf.saved_model.load(os.fspath(export_dir))
    if SIGNATURE_NAME not in loaded.signatures:
        raise ExportMismatchError(
            f"{export_dir!r} has no {SIGNATURE_NAME!r} signature. "
            f"Received signatures: {sorted(loaded.signatures)}"
        )
    served = loaded.signatures[SIGNATURE_NAME](
        **{INPUT_NAME: tf.constant(images)})
    served = {k: v.numpy() for k, v in served.items()}
    missing = set(OUTPUT_NAMES) - set(served)
    if missing:
        raise ExportMismatchError(
            f"The served signature lacks outputs {sorted(missing)}. "
            f"Received outputs: {sorted(served)}"
        )
    expected = keras_probabilities(model, images, norm, logits_key)
    probs = served["probabilities"]
    if probs.shape != expected.shape:
        raise ExportMismatchError(
            f"Served probabilities have shape {probs.shape}, the Keras "
            f"model's {expected.shape}."
        )
    k = served["top_k_scores"].shape[-1]
    expected_top = -np.sort(-expected, axis=-1)[:, :k]
    diff = max(float(np.max(np.abs(probs - expected), initial=0.0)),
               float(np.max(np.abs(served["top_k_scores"] - expected_top),
                            initial=0.0)))
    if not diff <= atol:  # also catches NaN
        raise ExportMismatchError(
            f"The reloaded SavedModel at {export_dir!r} differs from the "
            f"Keras model by {diff:.3g} (max abs, probabilities / top-k "
            f"scores) on {len(images)} images; allowed: {atol:g}."
        )
    gathered = np.take_along_axis(expected, served["top_k_classes"], -1)
    if not np.allclose(gathered, expected_top, atol=atol, rtol=0):
        raise ExportMismatchError(
            "The served top_k_classes do not index the largest Keras "
            f"probabilities (beyond ties within {atol:g})."
        )
    return diff
