r"""Export a trained student for TF Serving and check the reloaded SavedModel.

Writes `<export_root>/<name>/<version>/` (a SavedModel whose
`serving_default` signature takes raw uint8 images), the student `.keras`
next to it and `<export_root>/models.config`; then reloads the SavedModel and
compares it with the Keras student, under the statistics the student was
trained under, on a few test images (a stratified pick of real ones from
`keras_semkd.data` when a local copy exists, generated ones otherwise).
See `saved_models/README.md` for serving the result.

With `--run_dir` the class names, the normalization statistics and the
image size come from the run (its `data.json`), so any run exports --
image-folder runs included -- and `--dataset` is not needed (nor allowed
to differ from the run's). A run without `student.keras` (e.g. from
train_teacher.py before it saved one) exports its
`checkpoints/last.weights.h5`.

Examples:

    python experiments/export.py --run_dir=runs/cpu_smoke
    python experiments/export.py --student=runs/cpu_smoke/student.keras \
        --name=resnet8_kd --dataset=cifar100 --top_k=5
    python experiments/export.py --run_dir=runs/teacher-resnet8  # any data
    python experiments/export.py --run_dir=runs/cpu_smoke --version=3 \
        --overwrite
"""

import os

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("student", None, "Path of the student `.keras` file.")
flags.DEFINE_string("run_dir", None,
                    "A run directory (distill.py / train_teacher.py): "
                    "student.keras (or checkpoints/last.weights.h5), "
                    "config.json and data.json (class names, training "
                    "statistics).")
flags.DEFINE_string("name", None,
                    "Model name for TF Serving. Default: the run folder's "
                    "name, else the student model's name.")
flags.DEFINE_integer("version", None,
                     "Version number. Default: the next free one.")
flags.DEFINE_string("export_root", "saved_models",
                    "Folder served by TF Serving.")
flags.DEFINE_string("dataset", None,
                    "Without --run_dir: the dataset the student was trained "
                    "on (its normalization and class names; image_folder "
                    "statistics are computed from --data_dir's train "
                    "split). Default cifar100. With --run_dir: the run's.")
flags.DEFINE_integer("top_k", 5, "Classes returned by top_k_* outputs.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --version.")
flags.DEFINE_string("serving_base_path", "/models",
                    "Where the server sees --export_root (models.config "
                    "base paths); empty: this machine's absolute paths.")
flags.DEFINE_string("data_dir", None, "Dataset location for check images.")
flags.DEFINE_integer("num_check_images", 8,
                     "Test images for the reload check.")


def _read_run_dir(run_dir):
    """`(student model, recipe dict, data record)` of a run directory."""
    from keras_semkd import configs
    from keras_semkd import export
    from keras_semkd import models
    from keras_semkd import training
    from keras_semkd.distillers import build

    config = os.path.join(run_dir, training.CONFIG_FILE)
    if not os.path.isfile(config):
        raise FileNotFoundError(
            f"No {training.CONFIG_FILE} in --run_dir={run_dir!r}: not a run "
            "directory.")
    with open(config, encoding="utf-8") as f:
        recipe = configs.Recipe.from_json(f.read())
    record = training.read_run_data(run_dir)
    student_path = os.path.join(run_dir, "student.keras")
    if os.path.isfile(student_path):
        return export.load_student(student_path), recipe, record, \
            student_path
    weights = os.path.join(run_dir, "checkpoints", "last.weights.h5")
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"--run_dir={run_dir!r} holds neither student.keras nor "
            "checkpoints/last.weights.h5: no trained student to export.")
    logging.info("No student.keras in %s: exporting %s.", run_dir, weights)
    student = models.get(recipe.student, num_classes=record["num_classes"],
                         input_shape=tuple(record["input_shape"]))
    build.load_weights_checked(student, weights, "student",
                               record["num_classes"])
    return student, recipe, record, weights


def _plain_record(dataset, student):
    """Class names and statistics of `--dataset` for a bare --student: the
    dataset's registered constants and names when it has them (no data
    needed), else read from its train split in --data_dir."""
    from keras_semkd import data as data_lib
    from keras_semkd import export

    spec = data_lib.DATASETS.get(dataset)
    num_classes = int(student.output["logits"].shape[-1]) if isinstance(
        student.output, dict) else int(student.output.shape[-1])
    if spec.normalization is not None:
        norm = data_lib.get_normalization(spec.normalization)
        return {"dataset": dataset, "data_dir": FLAGS.data_dir,
                "class_names": list(export.default_class_names(
                    dataset, num_classes)),
                "normalization": {
                    "mean": list(norm.mean), "std": list(norm.std),
                    "source": f"registered constants {spec.normalization!r}"}}
    _, _, info = data_lib.load_split(dataset, "train",
                                     data_dir=FLAGS.data_dir)
    return {"dataset": dataset, "data_dir": FLAGS.data_dir,
            "class_names": list(info.class_names),
            "input_shape": list(info.input_shape),
            "normalization": {"mean": list(info.normalization.mean),
                              "std": list(info.normalization.std),
                              "source": info.normalization_source}}


def _record_loader_kwargs(record):
    from keras_semkd import training

    return training.record_loader_kwargs(record)


def _check_images(record, image_shape, n):
    """Returns `(uint8 images, labels or None, description)`: a stratified
    pick of `n` test images of the run's data (not the first `n`, which in
    a class-ordered folder are one class), else generated ones."""
    import numpy as np

    from keras_semkd import data as data_lib

    dataset = record["dataset"]
    try:
        images, labels, info = data_lib.load_split(
            dataset, "test", data_dir=record.get("data_dir"),
            max_examples=n, normalization=record["normalization"],
            **_record_loader_kwargs(record))
        if tuple(images.shape[1:]) == tuple(image_shape) and \
                list(info.class_names) == list(record["class_names"]):
            kind = "GENERATED" if info.is_generated else "real"
            return images, np.asarray(labels), \
                f"{kind} {dataset} test images ({info.describe_split()})"
        logging.warning("%s test images are %s with classes %s; the "
                        "student takes %s.", dataset, images.shape[1:],
                        info.class_names, image_shape)
    except (FileNotFoundError, ValueError, KeyError,
            data_lib.ChecksumError) as e:
        logging.warning("No %s test images (%s).", dataset, e)
    height = image_shape[0] or 32
    images, _ = data_lib.synthetic.synthetic_images(
        n, num_classes=2, image_size=height, seed=0)
    return images, None, "GENERATED images (no real test data available)"


def main(argv):
    del argv
    import numpy as np

    from keras_semkd import export
    from keras_semkd import training

    if bool(FLAGS.student) == bool(FLAGS.run_dir):
        raise app.UsageError("Pass exactly one of --student and --run_dir.")
    if FLAGS.run_dir:
        student, recipe, record, student_path = _read_run_dir(FLAGS.run_dir)
        if FLAGS.dataset and FLAGS.dataset != record["dataset"]:
            raise app.UsageError(
                f"--dataset={FLAGS.dataset!r}, but the run trained on "
                f"{record['dataset']!r}: its class names and training "
                "statistics are used. Drop --dataset.")
        if FLAGS.data_dir:
            record = dict(record, data_dir=FLAGS.data_dir)
    else:
        student_path = FLAGS.student
        student = export.load_student(student_path)
        recipe = None
        record = _plain_record(FLAGS.dataset or "cifar100", student)
    name = FLAGS.name or (
        os.path.basename(os.path.normpath(FLAGS.run_dir)) if FLAGS.run_dir
        else student.name)
    result = export.export_student(
        student, FLAGS.export_root, name, FLAGS.version,
        top_k=FLAGS.top_k, recipe=recipe, overwrite=FLAGS.overwrite,
        serving_base_path=FLAGS.serving_base_path or None,
        source=student_path, run_data=record,
    )
    logging.info("Exported %s version %d to %s (student %s, %d parameters); "
                 "Keras file %s; config %s.", result.name, result.version,
                 result.path, student.name,
                 result.metadata["num_parameters"], result.keras_path,
                 result.config_path)

    images, labels, described = _check_images(
        record, tuple(result.metadata["signature"]["inputs"][
            export.INPUT_NAME]["shape"][1:]), FLAGS.num_check_images)
    # Against the Keras student under the *training* statistics.
    diff = export.reload_check(result.path, student, images,
                               normalization=training.run_normalization(
                                   record))
    logging.info("Reload check on %d %s: max |served - keras| = %.3g "
                 "(allowed 1e-5).", len(images), described, diff)
    import tensorflow as tf

    served = tf.saved_model.load(result.path).signatures[
        export.SIGNATURE_NAME](images=tf.constant(images))
    top_names = served["top_k_names"].numpy().astype(str)
    top_scores = served["top_k_scores"].numpy()
    class_names = result.metadata["class_names"]
    for i in range(min(4, len(images))):
        truth = (f" (label: {class_names[int(labels[i])]})"
                 if labels is not None and labels.ndim == 1 else "")
        logging.info("image %d%s: %s", i, truth, ", ".join(
            f"{n} {s:.3f}" for n, s in zip(top_names[i], top_scores[i])))
    if labels is not None and labels.ndim == 1:
        top1 = float(np.mean(
            served["top_k_classes"].numpy()[:, 0] == labels))
        logging.info("top-1 on these %d images: %.3f", len(images), top1)
    print(f"exported {result.name} v{result.version} -> {result.path} "
          f"(reload max abs diff {diff:.2g} on {len(images)} {described})")


if __name__ == "__main__":
    app.run(main)
