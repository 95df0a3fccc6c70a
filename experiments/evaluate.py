r"""Evaluate a trained student (or any zoo model): top-1/top-5, per-class
accuracy and the confusion matrix, written as JSON + PNG.

    python experiments/evaluate.py --run_dir=runs/cpu_smoke
    python experiments/evaluate.py --model=resnet8 \
        --weights=runs/cpu_smoke/checkpoints/best.weights.h5

With `--run_dir` everything about the data comes from the run (its
`data.json`): the dataset and where it was read, the normalization
statistics it was trained under and its class names; `--dataset` /
`--data_dir` evaluate it on other data with the same classes (checked by
name). `--split=validation` is only ever held-out data: the run's carved
validation part, or the dataset's own validation split; a run trained on
all of train of a dataset without one has no validation data (refused).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None,
                    "A run directory (config.json, data.json, checkpoints/).")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"],
                  "Which checkpoint of --run_dir.")
flags.DEFINE_string("model", None, "Zoo model name (with --weights).")
flags.DEFINE_string("weights", None, "Weights file (.weights.h5) or .keras.")
flags.DEFINE_string("dataset", None, "Dataset (default: the run's).")
flags.DEFINE_string("data_dir", None,
                    "Dataset location (default: the run's).")
flags.DEFINE_enum("split", "test", ["test", "validation", "train"],
                  "Split to evaluate.")
flags.DEFINE_float("validation_split", None,
                   "Without --run_dir: the fraction of train that was "
                   "carved out (and held out) when the model was trained, "
                   "to evaluate --split=validation on it.")
flags.DEFINE_integer("split_seed", None,
                     "Without --run_dir: the seed of that carve-out.")
flags.DEFINE_integer("num_classes", None, "Classes (default: the run's).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.DEFINE_string("output_dir", None,
                    "Where to write evaluation.json / confusion.png "
                    "(default: the run directory or the cwd).")


def _run_inputs():
    """Model, weights and data arguments of --run_dir."""
    from keras_semkd import configs
    from keras_semkd import training

    if FLAGS.validation_split is not None or FLAGS.split_seed is not None:
        raise app.UsageError(
            "--validation_split/--split_seed come from the run with "
            "--run_dir (its data.json); drop them.")
    config = os.path.join(FLAGS.run_dir, training.CONFIG_FILE)
    if not os.path.isfile(config):
        raise FileNotFoundError(
            f"No {training.CONFIG_FILE} in --run_dir={FLAGS.run_dir!r}: not a "
            "run directory.")
    with open(config, encoding="utf-8") as f:
        recipe = configs.Recipe.from_json(f.read())
    record = training.read_run_data(FLAGS.run_dir)
    dataset = FLAGS.dataset or record["dataset"]
    data_dir = FLAGS.data_dir or (record.get("data_dir")
                                  if dataset == record["dataset"] else None)
    if FLAGS.num_classes and FLAGS.num_classes != record["num_classes"]:
        raise app.UsageError(
            f"--num_classes={FLAGS.num_classes}, but the run has "
            f"{record['num_classes']} classes.")
    split_args = training.held_out_split_args(record, FLAGS.split, dataset)
    data_args = dict(split_args, data_dir=data_dir,
                     normalization=training.run_normalization(record))
    weights = os.path.join(FLAGS.run_dir, "checkpoints",
                           f"{FLAGS.checkpoint}.weights.h5")
    return (recipe.student, weights, dataset, data_args, record,
            recipe.num_classes)


def _plain_inputs():
    if not (FLAGS.model or (FLAGS.weights or "").endswith(".keras")):
        raise app.UsageError("Give --run_dir, or --model with --weights "
                             "(or a .keras --weights).")
    if (FLAGS.validation_split is None) != (FLAGS.split_seed is None):
        raise app.UsageError(
            "--validation_split and --split_seed go together (the carve-out "
            "the model was trained with).")
    data_args = {"validation_split": FLAGS.validation_split or 0.0,
                 "split_seed": FLAGS.split_seed}
    return (FLAGS.model, FLAGS.weights, FLAGS.dataset or "cifar100",
            data_args, None, FLAGS.num_classes)


def main(argv):
    del argv
    import keras
    import numpy as np

    from keras_semkd import data as data_lib
    from keras_semkd import evaluation
    from keras_semkd import models
    from keras_semkd import plotting
    from keras_semkd import training
    from keras_semkd.distillers import build

    if FLAGS.run_dir:
        name, weights, dataset, data_args, record, num_classes = \
            _run_inputs()
    else:
        name, weights, dataset, data_args, record, num_classes = \
            _plain_inputs()
    if weights and not os.path.exists(weights):
        raise FileNotFoundError(f"No weights at {weights!r}.")
    ds, info = data_lib.get_dataset(dataset, FLAGS.split, FLAGS.batch_size,
                                    **data_args)
    if record is not None:
        training.check_class_names(
            record, info, what=f"{dataset} {FLAGS.split} ({info.source})")
        if list(info.input_shape) != list(record["input_shape"]):
            raise training.DataMismatchError(
                f"{dataset} {FLAGS.split} images are {info.input_shape}, the "
                f"run trained on {tuple(record['input_shape'])}.")
    num_classes = num_classes or info.num_classes
    if weights and weights.endswith(".keras"):
        model = keras.saving.load_model(weights)
        build.check_num_classes(model, num_classes, "model")
    else:
        model = models.get(name, num_classes=num_classes,
                           input_shape=info.input_shape)
        build.load_weights_checked(model, weights, "model", num_classes)
    if info.num_classes != num_classes:
        raise ValueError(
            f"{dataset} has {info.num_classes} classes, the model "
            f"{num_classes}. Received: num_classes={num_classes}")
    report = evaluation.evaluate(model, ds, num_classes=num_classes)
    out = FLAGS.output_dir or FLAGS.run_dir or "."
    os.makedirs(out, exist_ok=True)
    per_class = report.pop("per_class")
    confusion = report.pop("confusion")
    names = list(info.class_names)
    order = np.argsort(np.nan_to_num(per_class, nan=2.0))
    report.update({
        "model": name, "weights": weights, "dataset": dataset,
        "data_dir": None if data_args.get("data_dir") is None
        else os.fspath(data_args["data_dir"]),
        "split": FLAGS.split,
        # Which images: carved from train or not, all of them or not.
        "images": info.split_record(),
        "normalization": {"mean": list(info.normalization.mean),
                          "std": list(info.normalization.std),
                          "source": "the run's training statistics"
                          if record is not None
                          else info.normalization_source},
        "is_generated": info.is_generated,
        "per_class": {names[i]: float(per_class[i])
                      for i in range(len(names))},
        "worst_classes": [names[i] for i in order[:5]],
    })
    with open(os.path.join(out, f"evaluation_{FLAGS.split}.json"), "w") as f:
        json.dump(report, f, indent=2)
    np.save(os.path.join(out, f"confusion_{FLAGS.split}.npy"), confusion)
    plotting.plot_confusion(
        confusion, os.path.join(out, f"confusion_{FLAGS.split}.png"),
        class_names=names, title=f"{name} on {dataset} {FLAGS.split}",
    )
    logging.info("wrote %s", out)
    k = min(5, num_classes)  # top-k of classification_report
    print(f"{name} on {dataset}/{info.describe_split()}: top-1 "
          f"{report['top1']:.4f}, top-{k} {report[f'top{k}']:.4f}; worst "
          f"classes: {', '.join(report['worst_classes'])}")


if __name__ == "__main__":
    app.run(main)
