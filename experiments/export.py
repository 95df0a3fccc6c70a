r"""Export a trained student for TF Serving and check the reloaded SavedModel.

Writes `<export_root>/<name>/<version>/` (a SavedModel whose
`serving_default` signature takes raw uint8 images), the student `.keras`
next to it and `<export_root>/models.config`; then reloads the SavedModel and
compares it with the Keras student on a few test images (real ones from
`keras_semkd.data` when a local copy exists, generated ones otherwise).
See `saved_models/README.md` for serving the result.

Examples:

    python experiments/export.py --run_dir=runs/cpu_smoke
    python experiments/export.py --student=runs/cpu_smoke/student.keras \
        --name=resnet8_kd --dataset=cifar100 --top_k=5
    python experiments/export.py --run_dir=runs/cpu_smoke --version=3 \
        --overwrite
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("student", None, "Path of the student `.keras` file.")
flags.DEFINE_string("run_dir", None,
                    "A run folder of experiments/distill.py holding "
                    "student.keras and report.json (recipe, dataset).")
flags.DEFINE_string("name", None,
                    "Model name for TF Serving. Default: the run folder's "
                    "name, else the student model's name.")
flags.DEFINE_integer("version", None,
                     "Version number. Default: the next free one.")
flags.DEFINE_string("export_root", "saved_models",
                    "Folder served by TF Serving.")
flags.DEFINE_string("dataset", None,
                    "Dataset whose normalization and class names the "
                    "signature uses. Default: the run's (report.json), else "
                    "cifar100.")
flags.DEFINE_integer("top_k", 5, "Classes returned by top_k_* outputs.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --version.")
flags.DEFINE_string("serving_base_path", "/models",
                    "Where the server sees --export_root (models.config "
                    "base paths); empty: this machine's absolute paths.")
flags.DEFINE_string("data_dir", None, "Dataset location for check images.")
flags.DEFINE_integer("num_check_images", 8,
                     "Test images for the reload check.")


def _read_run_dir(run_dir):
    student = os.path.join(run_dir, "student.keras")
    if not os.path.isfile(student):
        raise app.UsageError(f"No student.keras in --run_dir={run_dir!r}.")
    report_path = os.path.join(run_dir, "report.json")
    report = {}
    if os.path.isfile(report_path):
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    else:
        logging.warning("No report.json in %s: no recipe is recorded.",
                        run_dir)
    return student, report


def _check_images(dataset, image_shape, n):
    """Returns `(uint8 images, labels or None, description)`."""
    import numpy as np

    from keras_semkd import data as data_lib

    try:
        images, labels, info = data_lib.load_split(
            dataset, "test", data_dir=FLAGS.data_dir)
        if tuple(images.shape[1:]) == tuple(image_shape):
            kind = "GENERATED" if info.is_generated else "real"
            return images[:n], np.asarray(labels)[:n], \
                f"{kind} {dataset} test images ({info.source})"
        logging.warning("%s test images are %s, the student takes %s.",
                        dataset, images.shape[1:], image_shape)
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

    if bool(FLAGS.student) == bool(FLAGS.run_dir):
        raise app.UsageError("Pass exactly one of --student and --run_dir.")
    report = {}
    if FLAGS.run_dir:
        student_path, report = _read_run_dir(FLAGS.run_dir)
    else:
        student_path = FLAGS.student
    recipe = report.get("recipe")
    dataset = (FLAGS.dataset or report.get("data", {}).get("name")
               or (recipe or {}).get("data", {}).get("dataset")
               or "cifar100")
    student = export.load_student(student_path)
    name = FLAGS.name or (
        os.path.basename(os.path.normpath(FLAGS.run_dir)) if FLAGS.run_dir
        else student.name)
    result = export.export_student(
        student, FLAGS.export_root, name, FLAGS.version, dataset=dataset,
        top_k=FLAGS.top_k, recipe=recipe, overwrite=FLAGS.overwrite,
        serving_base_path=FLAGS.serving_base_path or None,
        source=student_path,
    )
    logging.info("Exported %s version %d to %s (student %s, %d parameters); "
                 "Keras file %s; config %s.", result.name, result.version,
                 result.path, student.name,
                 result.metadata["num_parameters"], result.keras_path,
                 result.config_path)

    images, labels, described = _check_images(
        dataset, tuple(student.input_shape[1:]), FLAGS.num_check_images)
    diff = export.reload_check(result.path, student, images)
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
