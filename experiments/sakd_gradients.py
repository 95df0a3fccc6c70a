r"""Gradient norm of every loss term on the student, for an arm of the SAKD
protocol (docs/method.md, "Gradient norms").

Builds the arm's Distiller on the real CIFAR-100 training split, runs the
prefit of its terms, then measures, for each weighted term (and each SAKD
sub-term), the norm of its gradient with respect to the student's weights
and its cosine with the logit-KD gradient, averaged over `--batches`
batches, at the start and again after `--train_steps` training steps:

    python experiments/sakd_gradients.py --pair=mbv2-r8 --arms=sakd,kd

Writes `results/sakd_gradients/<pair>.json` (one entry per arm) and prints
a Markdown table.

With `--run_dirs`, measures instead at the state of finished (or
interrupted) runs, e.g. the confirmation's, as they stand at their last
step (no training):

    python experiments/sakd_gradients.py --pair=mbv2-r8 \
        --run_dirs=runs/sakd_protocol/confirmation/mbv2-r8/sakd/seed3

Each is recorded under its arm (`--arms`, one per run dir; by default
the directory above `seed<N>`) as `"end of run, seed <seed>"`. Besides
the cosine with KD (`cos_ref`), every row has the cosine with the
student's CE gradient (`cos_student_loss`).
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("pair", "mbv2-r8", "Protocol pair.")
flags.DEFINE_list("arms", ["sakd"], "Protocol arms.")
flags.DEFINE_integer("batches", 10, "Batches averaged per measurement.")
flags.DEFINE_integer("train_steps", 300,
                     "Training steps between the two measurements.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("teacher_weights", None,
                    "Teacher weights (default: the protocol's shipped file).")
flags.DEFINE_string("data_dir", None, "CIFAR-100 location.")
flags.DEFINE_list("run_dirs", [],
                  "Run directories to measure at their saved state instead "
                  "of building fresh arms.")
flags.DEFINE_string("output", None,
                    "JSON output (default results/sakd_gradients/<pair>.json)")


def measure(pair, arm):
    import keras

    from keras_semkd import training
    from keras_semkd.configs import sakd_protocol as spec
    from keras_semkd.distillers import build
    from keras_semkd.protocol import gradients

    recipe = spec.student_recipe(pair, arm, FLAGS.seed)
    if FLAGS.teacher_weights:
        import dataclasses

        recipe = dataclasses.replace(recipe,
                                     teacher_weights=FLAGS.teacher_weights)
    keras.utils.set_random_seed(FLAGS.seed)
    train_ds, _, info, _, steps = training.load_data(recipe, FLAGS.data_dir)
    optimizer = build.sgd_optimizer(recipe.optimizer, steps)
    model, _ = training.build_and_compile(recipe, None, info, optimizer)
    model.prefit_terms(train_ds, verbose=2)
    out = {"start": gradients.gradient_report(model, train_ds,
                                              FLAGS.batches)}
    if FLAGS.train_steps:
        model.fit(train_ds, epochs=1, steps_per_epoch=FLAGS.train_steps,
                  verbose=2)
        out[f"after_{FLAGS.train_steps}_steps"] = gradients.gradient_report(
            model, train_ds.skip(FLAGS.train_steps), FLAGS.batches)
    return out


def measure_run(run_dir):
    """`(seed, report)` at the saved state of `run_dir`."""
    import keras

    from keras_semkd import configs
    from keras_semkd import training
    from keras_semkd.protocol import gradients

    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        recipe = configs.Recipe.from_json(f.read())
    runner = training.Runner(recipe, run_dir, data_dir=FLAGS.data_dir)
    model = runner.restore()
    keras.utils.set_random_seed(FLAGS.seed)
    train_ds, _, _, _, _ = training.load_data(recipe, FLAGS.data_dir)
    epochs = len(runner.history)
    print(f"{run_dir}: {recipe.name}, seed {recipe.seed}, after {epochs} "
          "epochs")
    return recipe.seed, gradients.gradient_report(model, train_ds,
                                                  FLAGS.batches)


def main(argv):
    del argv
    path = FLAGS.output or os.path.join("results", "sakd_gradients",
                                        f"{FLAGS.pair}.json")
    results = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            results = json.load(f)

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, sort_keys=True)

    shown = []  # (arm, measurement key) of this invocation
    if FLAGS.run_dirs:
        given = FLAGS["arms"].present
        if given and len(FLAGS.arms) != len(FLAGS.run_dirs):
            raise app.UsageError("--arms names one arm per --run_dirs entry.")
        # Default arm: the protocol layout's .../<arm>/seed<N>.
        arms = FLAGS.arms if given else [
            os.path.basename(os.path.dirname(os.path.normpath(d)))
            for d in FLAGS.run_dirs]
        for arm, run_dir in zip(arms, FLAGS.run_dirs):
            seed, rows = measure_run(run_dir)
            when = f"end of run, seed {seed}"
            results.setdefault(arm, {})[when] = rows
            shown.append((arm, when))
            save()
    else:
        for arm in FLAGS.arms:
            results[arm] = measure(FLAGS.pair, arm)
            shown += [(arm, when) for when in results[arm]]
            save()
    for arm, when in shown:
        rows = results[arm][when]
        print(f"\n{FLAGS.pair} / {arm} / {when}\n")
        print("| term | gradient norm | cos with KD | cos with CE |")
        print("|---|---|---|---|")
        for name, r in sorted(rows.items()):
            print(f"| {name} | {r['norm']:.3f} ± {r['norm_std']:.3f} | "
                  f"{r['cos_ref']:+.3f} | "
                  f"{r.get('cos_student_loss', float('nan')):+.3f} |")


if __name__ == "__main__":
    app.run(main)
