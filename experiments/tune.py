r"""Tune a distillation recipe's loss weights, temperature and learning rate.

Every trial distills the teacher into a fresh student with the trial's
values applied to the recipe, trains on the train part of the data and is
scored by top-1 on a validation split carved out of train
(`--validation_split`, never the test split). The search state lives in
`<directory>/<project_name>`: running the same command again resumes it
(finished trials are not run again). The best trial is written as a recipe
to `<directory>/<project_name>/best_recipe.json`.

Without `--teacher_weights` a quick teacher is trained first for
`--teacher_epochs` on the same train part (as experiments/distill.py does).

Examples:

    python experiments/tune.py --dataset=synthetic --limit_train=512 \
        --max_trials=4 --epochs=2
    python experiments/tune.py --recipe=resnet32x4-resnet8x4-kd \
        --teacher_weights=teacher.weights.h5 --tuner=bayesian \
        --max_trials=20 --epochs=30
    python experiments/tune.py --search_space=space.json  # path -> entry
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from keras_semkd import configs

FLAGS = flags.FLAGS
flags.DEFINE_string("recipe", "cpu_smoke", "Registered recipe name.")
flags.DEFINE_string("method", None,
                    "With --teacher/--student: a method of "
                    "keras_semkd.configs.METHODS instead of --recipe.")
flags.DEFINE_string("teacher", None, "Teacher model name (with --method).")
flags.DEFINE_string("student", None, "Student model name (with --method).")
flags.DEFINE_string("teacher_weights", None,
                    "Trained teacher weights (.weights.h5).")
flags.DEFINE_integer("teacher_epochs", 2,
                     "Without --teacher_weights: epochs to train a quick "
                     "teacher first.")
flags.DEFINE_enum("tuner", "random", ["random", "hyperband", "bayesian"],
                  "keras-tuner search algorithm.")
flags.DEFINE_integer("max_trials", 10,
                     "Trials in the project (finished ones count when "
                     "resuming).")
flags.DEFINE_integer("epochs", 2,
                     "Training epochs per trial (Hyperband: max epochs).")
flags.DEFINE_float("validation_split", 0.1,
                   "Fraction of train carved out as the validation set "
                   "that scores the trials (must be > 0).")
flags.DEFINE_integer("limit_train", None,
                     "Use at most this many training images per epoch.")
flags.DEFINE_integer("limit_eval", None,
                     "Validate on at most this many images.")
flags.DEFINE_integer("batch_size", None, "Override the batch size.")
flags.DEFINE_string("dataset", None,
                    "cifar100 | cinic10 | image_folder | synthetic. Default: "
                    "the recipe's; cifar100 falls back to synthetic when no "
                    "local copy exists.")
flags.DEFINE_string("data_dir", None, "Dataset location.")
flags.DEFINE_string("search_space", None,
                    "JSON file: {path: {type: log|float|int|choice, min, "
                    "max, values}}. Default: derived from the recipe's "
                    "terms.")
flags.DEFINE_bool("tune_student_loss_weight", False,
                  "Default search space: also tune student_loss_weight.")
flags.DEFINE_string("directory", "tuning", "Where tuning projects live.")
flags.DEFINE_string("project_name", None,
                    "Project (sub-folder) name. Default: the recipe name.")
flags.DEFINE_bool("overwrite", False,
                  "Start the project over instead of resuming it.")
flags.DEFINE_integer("seed", None, "Override the recipe's seed.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity (0, 1 bar, 2 lines).")


def resolve_recipe():
    if FLAGS.method:
        if not (FLAGS.teacher and FLAGS.student):
            raise app.UsageError("--method needs --teacher and --student.")
        recipe = configs.make_recipe(FLAGS.teacher, FLAGS.student,
                                     FLAGS.method)
    else:
        recipe = configs.get(FLAGS.recipe)
    if FLAGS.dataset:
        recipe = recipe.override(**{"data.dataset": FLAGS.dataset})
    recipe = _with_available_data(recipe)
    if recipe.data.dataset == "synthetic":
        from keras_semkd import data as data_lib

        info = data_lib.load_split("synthetic", "train")[2]
        recipe = recipe.override(num_classes=info.num_classes)
    changes = {"data.validation_split": FLAGS.validation_split}
    for flag, key in (("seed", "seed"),
                      ("batch_size", "data.batch_size"),
                      ("limit_train", "data.limit_train"),
                      ("limit_eval", "data.limit_eval"),
                      ("data_dir", "data.data_dir"),
                      ("teacher_weights", "teacher_weights")):
        value = getattr(FLAGS, flag)
        if value is not None:
            changes[key] = value
    return recipe.override(**changes)


def _with_available_data(recipe):
    """CIFAR-100 without a local copy -> the generated dataset, loudly."""
    from keras_semkd import data as data_lib

    if recipe.data.dataset != "cifar100" or recipe.data.data_dir \
            or FLAGS.data_dir:
        return recipe
    if data_lib.default_cifar100_dir() is not None:
        return recipe
    logging.warning(
        "No CIFAR-100 copy found (looked in %s). Tuning on a small "
        "GENERATED dataset instead: accuracies are not CIFAR-100 numbers.",
        ", ".join(str(p) for p in data_lib.paths.data_search_paths()),
    )
    info = data_lib.load_split("synthetic", "train")[2]
    return recipe.override(**{"data.dataset": "synthetic",
                              "num_classes": info.num_classes,
                              "data.limit_train": None,
                              "data.limit_eval": None})


def quick_teacher(recipe, path):
    """Trains `recipe.teacher` alone on the same train part (validated on
    the same carved split), saves its weights to `path` and returns it."""
    from keras_semkd import training

    teacher_recipe = configs.recipes.quick_teacher_recipe(
        recipe, FLAGS.teacher_epochs)
    logging.info("No --teacher_weights: training a quick %s teacher for %d "
                 "epoch(s) first.", recipe.teacher, FLAGS.teacher_epochs)
    result = training.train(teacher_recipe, verbose=FLAGS.verbose)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    result["student"].save_weights(path)
    print(f"teacher {recipe.teacher}: validation top-1 "
          f"{result['test']['top1']:.4f} (weights: {path})")
    return result["student"]


def main(argv):
    del argv
    from keras_semkd import tuning

    recipe = resolve_recipe()
    if recipe.teacher is None:
        raise app.UsageError(
            f"Recipe {recipe.name!r} has no teacher: nothing to distill."
        )
    project_name = FLAGS.project_name or recipe.name
    search_space = None
    if FLAGS.search_space:
        with open(FLAGS.search_space, encoding="utf-8") as f:
            search_space = json.load(f)
    elif FLAGS.tune_student_loss_weight:
        search_space = tuning.default_search_space(recipe,
                                                   student_loss_weight=True)
    teacher = None
    if not recipe.teacher_weights:
        # Beside the project folder, which overwrite=True deletes.
        weights = os.path.join(FLAGS.directory,
                               f"{project_name}.teacher.weights.h5")
        if os.path.exists(weights) and not FLAGS.overwrite:
            logging.info("Resuming with the quick teacher in %s.", weights)
        else:
            teacher = quick_teacher(recipe, weights)
        recipe = recipe.override(teacher_weights=weights)
    logging.info("Base recipe:\n%s", recipe.to_json())
    result = tuning.tune(
        recipe, teacher, tuner=FLAGS.tuner, max_trials=FLAGS.max_trials,
        epochs=FLAGS.epochs, directory=FLAGS.directory,
        project_name=project_name, overwrite=FLAGS.overwrite,
        search_space=search_space, verbose=FLAGS.verbose,
    )
    print(f"{recipe.name}: best val_top1 {result['score']:.4f} (trial "
          f"{result['trial_id']} of {result['num_trials']}, {FLAGS.tuner})")
    for path, value in sorted(result["values"].items()):
        print(f"  {path} = {value:.6g}" if isinstance(value, float)
              else f"  {path} = {value!r}")
    print(f"best recipe: {result['recipe_path']}")


if __name__ == "__main__":
    app.run(main)
