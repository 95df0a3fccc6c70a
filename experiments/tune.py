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

from keras_semkd import resolve

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


#: flag -> the recipe field it sets (None: flag not given).
FLAG_FIELDS = (("dataset", "data.dataset"),
               ("validation_split", "data.validation_split"),
               ("seed", "seed"),
               ("batch_size", "data.batch_size"),
               ("limit_train", "data.limit_train"),
               ("limit_eval", "data.limit_eval"),
               ("data_dir", "data.data_dir"),
               ("teacher_weights", "teacher_weights"))


def resolve_recipe():
    """The recipe the flags name, with the flag values applied
    (`keras_semkd.resolve.resolve_recipe`)."""
    if FLAGS.method and not (FLAGS.teacher and FLAGS.student):
        raise app.UsageError("--method needs --teacher and --student.")
    changes = {key: getattr(FLAGS, flag) for flag, key in FLAG_FIELDS}
    return resolve.resolve_recipe(
        FLAGS.recipe, method=FLAGS.method, teacher=FLAGS.teacher,
        student=FLAGS.student, changes=changes)


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
    if not recipe.teacher_weights:
        from keras_semkd import training

        # Beside the project folder, which overwrite=True deletes.
        weights = os.path.join(FLAGS.directory,
                               f"{project_name}.teacher.weights.h5")
        if os.path.exists(weights) and not FLAGS.overwrite:
            logging.info("Resuming with the quick teacher in %s.", weights)
        else:
            report = training.train_quick_teacher(
                recipe, FLAGS.teacher_epochs, weights,
                os.path.join(FLAGS.directory, f"{project_name}.teacher"),
                verbose=FLAGS.verbose, overwrite=FLAGS.overwrite)
            print(f"teacher {recipe.teacher} (quick, {FLAGS.teacher_epochs} "
                  f"epoch(s)): top-1 {report['last']['top1']:.4f} on "
                  f"{report['eval']['description']} (weights: {weights})")
        recipe = recipe.override(teacher_weights=weights)
    logging.info("Base recipe:\n%s", recipe.to_json())
    result = tuning.tune(
        recipe, None, tuner=FLAGS.tuner, max_trials=FLAGS.max_trials,
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
