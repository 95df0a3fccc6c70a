r"""Train a teacher (or a student alone) from a recipe, in a run directory.

    python experiments/train_teacher.py --recipe=teacher-resnet56
    python experiments/train_teacher.py --model=resnet8 --epochs=2 \
        --limit_train=5000   # a quick CPU check

Rerunning the same command resumes the run directory. The weights to pass
as --teacher_weights to distill.py are
runs/<recipe>/checkpoints/{best,last}.weights.h5 (and the model is saved as
runs/<recipe>/student.keras). `--resume_from=<run_dir> --run_dir=<new>`
continues a run's last state with changed hyper-parameters.
"""

import os

from absl import app
from absl import flags

from keras_semkd import configs

FLAGS = flags.FLAGS
flags.DEFINE_string("recipe", None, "A teacher recipe (teacher-<model>).")
flags.DEFINE_string("model", None, "Or a zoo model name.")
flags.DEFINE_integer("epochs", None, "Override epochs.")
flags.DEFINE_integer("batch_size", None, "Override the batch size.")
flags.DEFINE_integer("limit_train", None, "Images per epoch (smoke runs).")
flags.DEFINE_integer("limit_eval", None, "Test images (smoke runs).")
flags.DEFINE_float("learning_rate", None, "Override the learning rate.")
flags.DEFINE_string("dataset", None, "Dataset (default cifar100).")
flags.DEFINE_string("data_dir", None, "Dataset location.")
flags.DEFINE_integer("seed", None, "Seed.")
flags.DEFINE_string("mixed_precision", None,
                    "mixed_bfloat16 | mixed_float16.")
flags.DEFINE_enum("strategy", "auto", ["auto", "none", "mirrored",
                                       "multi_worker"],
                  "Distribution strategy (keras_semkd.distribute).")
flags.DEFINE_integer("checkpoint_every", 200, "State every N steps.")
flags.DEFINE_string("output_dir", "runs", "Run directory root.")
flags.DEFINE_string("run_dir", None,
                    "The run directory (default: <output_dir>/<recipe>).")
flags.DEFINE_string("resume_from", None,
                    "Start from the last state of another run directory "
                    "(other hyper-parameters may change); needs --run_dir.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity.")
flags.DEFINE_list("image_size", None,
                  "Resize images on load to H,W (or one N): image folders "
                  "of any size; sets data.image_size.")


def main(argv):
    del argv
    from keras_semkd import distribute
    from keras_semkd import plotting
    from keras_semkd import training

    if FLAGS.recipe:
        recipe = configs.get(FLAGS.recipe)
    elif FLAGS.model:
        recipe = configs.Recipe(
            name=f"teacher-{FLAGS.model}", student=FLAGS.model,
            optimizer=configs.recipes.protocol_optimizer(FLAGS.model))
    else:
        raise app.UsageError("Give --recipe or --model.")
    changes = {k: v for k, v in {
        "epochs": FLAGS.epochs, "seed": FLAGS.seed,
        "data.batch_size": FLAGS.batch_size,
        "data.limit_train": FLAGS.limit_train,
        "data.limit_eval": FLAGS.limit_eval,
        "data.dataset": FLAGS.dataset, "data.data_dir": FLAGS.data_dir,
        "optimizer.learning_rate": FLAGS.learning_rate,
        "mixed_precision": FLAGS.mixed_precision,
    }.items() if v is not None}
    if FLAGS.image_size:
        try:
            size = [int(v) for v in FLAGS.image_size]
        except ValueError:
            size = []
        size = size * 2 if len(size) == 1 else size
        if len(size) != 2 or min(size) < 1:
            raise app.UsageError(
                "--image_size takes H,W or N (positive integers). Received: "
                f"{','.join(FLAGS.image_size)!r}")
        changes["data.image_size"] = size
    if recipe.teacher is not None:
        raise app.UsageError(f"{recipe.name} is a distillation recipe; use "
                             "experiments/distill.py.")
    recipe = recipe.override(**changes) if changes else recipe
    if recipe.data.dataset != "cifar100":
        from keras_semkd import data as data_lib

        info = data_lib.load_split(recipe.data.dataset, "train",
                                   data_dir=recipe.data.data_dir,
                                   **recipe.data.loader_kwargs())[2]
        recipe = recipe.override(num_classes=info.num_classes)
    if FLAGS.resume_from and not FLAGS.run_dir:
        raise app.UsageError(
            "--resume_from starts a new run: give it its own --run_dir.")
    run_dir = FLAGS.run_dir or os.path.join(FLAGS.output_dir, recipe.name)
    runner = training.Runner(
        recipe, run_dir, checkpoint_every=FLAGS.checkpoint_every,
        strategy=distribute.make_strategy(FLAGS.strategy),
        resume_from=FLAGS.resume_from)
    with runner.lock():
        report = runner.run(verbose=FLAGS.verbose)
        if not runner.chief:
            return
        runner.student.save(os.path.join(run_dir, "student.keras"))
        plotting.plot_training_curves(
            {recipe.student: os.path.join(run_dir, "history.csv")},
            os.path.join(run_dir, "curves.png"), title=recipe.name)
    print(f"{recipe.name}: top-1 last {report['last']['top1']:.4f}, "
          f"best {report['best_top1']:.4f} on "
          f"{report['eval']['description']}; weights in "
          f"{os.path.join(run_dir, 'checkpoints')}")


if __name__ == "__main__":
    app.run(main)
