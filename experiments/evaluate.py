r"""Evaluate a trained student (or any zoo model): top-1/top-5, per-class
accuracy and the confusion matrix, written as JSON + PNG.

    python experiments/evaluate.py --run_dir=runs/cpu_smoke
    python experiments/evaluate.py --model=resnet8 \
        --weights=runs/cpu_smoke/checkpoints/best.weights.h5
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None,
                    "A run directory (config.json + checkpoints/).")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"],
                  "Which checkpoint of --run_dir.")
flags.DEFINE_string("model", None, "Zoo model name (with --weights).")
flags.DEFINE_string("weights", None, "Weights file (.weights.h5) or .keras.")
flags.DEFINE_string("dataset", None, "Dataset (default: the run's).")
flags.DEFINE_string("data_dir", None, "Dataset location.")
flags.DEFINE_enum("split", "test", ["test", "validation", "train"],
                  "Split to evaluate.")
flags.DEFINE_integer("num_classes", None, "Classes (default: the run's).")
flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.")
flags.DEFINE_string("output_dir", None,
                    "Where to write evaluation.json / confusion.png "
                    "(default: the run directory or the cwd).")


def main(argv):
    del argv
    import keras
    import numpy as np

    from keras_semkd import configs
    from keras_semkd import data as data_lib
    from keras_semkd import evaluation
    from keras_semkd import models
    from keras_semkd import plotting

    dataset, num_classes = FLAGS.dataset, FLAGS.num_classes
    validation_split = 0.0
    if FLAGS.run_dir:
        with open(os.path.join(FLAGS.run_dir, "config.json")) as f:
            recipe = configs.Recipe.from_json(f.read())
        name = recipe.student
        weights = os.path.join(FLAGS.run_dir, "checkpoints",
                               f"{FLAGS.checkpoint}.weights.h5")
        dataset = dataset or recipe.data.dataset
        num_classes = num_classes or recipe.num_classes
        validation_split = recipe.data.validation_split
    else:
        if not (FLAGS.model or (FLAGS.weights or "").endswith(".keras")):
            raise app.UsageError("Give --run_dir, or --model with --weights "
                                 "(or a .keras --weights).")
        name, weights = FLAGS.model, FLAGS.weights
        dataset = dataset or "cifar100"
    ds, info = data_lib.get_dataset(
        dataset, FLAGS.split, FLAGS.batch_size, data_dir=FLAGS.data_dir,
        validation_split=validation_split or (
            0.1 if FLAGS.split == "validation" else 0.0),
    )
    num_classes = num_classes or info.num_classes
    if weights and weights.endswith(".keras"):
        model = keras.saving.load_model(weights)
    else:
        model = models.get(name, num_classes=num_classes,
                           input_shape=info.input_shape)
        if not weights or not os.path.exists(weights):
            raise FileNotFoundError(f"No weights at {weights!r}.")
        model.load_weights(weights)
    report = evaluation.evaluate(model, ds, num_classes=num_classes)
    out = FLAGS.output_dir or FLAGS.run_dir or "."
    os.makedirs(out, exist_ok=True)
    per_class = report.pop("per_class")
    confusion = report.pop("confusion")
    names = list(info.class_names)
    order = np.argsort(np.nan_to_num(per_class, nan=2.0))
    report.update({
        "model": name, "weights": weights, "dataset": dataset,
        "split": FLAGS.split, "is_generated": info.is_generated,
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
    print(f"{name} on {dataset}/{FLAGS.split} ({report['num_examples']} "
          f"images): top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f};"
          f" worst classes: {', '.join(report['worst_classes'])}")


if __name__ == "__main__":
    app.run(main)
