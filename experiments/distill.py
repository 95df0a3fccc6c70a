r"""Distill a teacher into a student from a named recipe.

The main job of the README: with no flags it runs the `cpu_smoke` recipe
(resnet20 -> resnet8 with KD, a short schedule) on the CIFAR-100 copy in
`../shared/data`, or, when there is none, on a small generated dataset (and
says so), then trains the same student alone on the same budget (seed,
data, epochs, optimizer) and prints the two next to the teacher, as a small
table also saved as `comparison.json` / `comparison.md` in the run
directory (`--nocompare` skips the student-alone run). Without
`--teacher_weights` the teacher is the shipped one (weights/README.md) or
is first trained for `--teacher_epochs` on the same data, so the job runs
on a fresh machine.

Examples:

    python experiments/distill.py
    python experiments/distill.py --recipe=resnet32x4-resnet8x4-kd \
        --teacher_weights=teacher.weights.h5 --epochs=240
    python experiments/distill.py --override=terms.kd.temperature=2 \
        --override=optimizer.learning_rate=0.1

Continue a run's last state with changed hyper-parameters (e.g. after a
NaN, with a lower learning rate) in a new run directory:

    python experiments/distill.py --override=optimizer.learning_rate=0.01 \
        --resume_from=runs/cpu_smoke --run_dir=runs/cpu_smoke-lr0.01
"""

import dataclasses
import json
import os

from absl import app
from absl import flags
from absl import logging

from keras_semkd import configs
from keras_semkd import resolve

FLAGS = flags.FLAGS
flags.DEFINE_string("recipe", "cpu_smoke", "Registered recipe name.")
flags.DEFINE_string("method", None,
                    "With --teacher/--student: a method of "
                    "keras_semkd.configs.METHODS instead of --recipe.")
flags.DEFINE_string("teacher", None, "Teacher model name (with --method).")
flags.DEFINE_string("student", None, "Student model name (with --method).")
flags.DEFINE_integer("epochs", None, "Override the recipe's epochs.")
flags.DEFINE_integer("batch_size", None, "Override the batch size.")
flags.DEFINE_integer("limit_train", None,
                     "Use at most this many training images per epoch.")
flags.DEFINE_integer("limit_eval", None,
                     "Evaluate on at most this many test images.")
flags.DEFINE_string("dataset", None,
                    "cifar100 | cinic10 | image_folder | synthetic. Default: "
                    "the recipe's; cifar100 falls back to synthetic when no "
                    "local copy exists.")
flags.DEFINE_string("data_dir", None, "Dataset location.")
flags.DEFINE_string("teacher_weights", None,
                    "Trained teacher weights (.weights.h5 or .keras).")
flags.DEFINE_bool("shipped_teacher", True,
                  "Without --teacher_weights, use the teacher weights "
                  "shipped in weights/ when there are some for the recipe's "
                  "teacher and dataset (weights/README.md).")
flags.DEFINE_integer("teacher_epochs", 2,
                     "Without --teacher_weights: epochs to train the teacher "
                     "first (a quick teacher, reported as such).")
flags.DEFINE_multi_string("override", [],
                          "Dotted config overrides, e.g. "
                          "optimizer.learning_rate=0.1 or "
                          "terms.kd.temperature=2 (values parsed as JSON).")
flags.DEFINE_string("output_dir", "runs",
                    "Run directory root: <output_dir>/<recipe>/ holds the "
                    "config, data.json, history.csv, TensorBoard logs, "
                    "checkpoints, report.json; rerunning resumes it.")
flags.DEFINE_string("run_dir", None,
                    "The run directory (default: <output_dir>/<recipe>).")
flags.DEFINE_string("resume_from", None,
                    "Start from the last state of another run directory "
                    "(same model, data and seed; other hyper-parameters may "
                    "change), e.g. to continue after a NaN with a lower "
                    "learning rate. Needs --run_dir (a new directory).")
flags.DEFINE_integer("seed", None, "Override the seed.")
flags.DEFINE_integer("checkpoint_every", 200,
                     "Save the full training state every N steps (resume "
                     "mid-epoch by running the same command again).")
flags.DEFINE_enum("strategy", "auto", ["auto", "none", "mirrored",
                                       "multi_worker"],
                  "Distribution strategy (keras_semkd.distribute): auto = "
                  "MirroredStrategy over all visible GPUs, else none.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity (0, 1 bar, 2 lines).")
flags.DEFINE_bool("compare", True,
                  "Also train the student alone on the same budget and "
                  "print it next to the distilled student.")
flags.DEFINE_list("image_size", None,
                  "Resize images on load to H,W (or one N): image folders "
                  "of any size; sets data.image_size.")


#: flag -> the recipe field it sets (None: flag not given).
FLAG_FIELDS = (("epochs", "epochs"), ("seed", "seed"),
               ("batch_size", "data.batch_size"),
               ("limit_train", "data.limit_train"),
               ("limit_eval", "data.limit_eval"),
               ("dataset", "data.dataset"),
               ("data_dir", "data.data_dir"),
               ("teacher_weights", "teacher_weights"))


def resolve_recipe():
    """The recipe the flags name, with the overrides and flag values
    applied (`keras_semkd.resolve.resolve_recipe`)."""
    try:
        changes = resolve.parse_overrides(FLAGS.override)
        for flag, key in FLAG_FIELDS:
            if getattr(FLAGS, flag) is not None:
                changes[key] = getattr(FLAGS, flag)
        if FLAGS.image_size:
            changes["data.image_size"] = resolve.parse_image_size(
                FLAGS.image_size)
        if FLAGS.method and not (FLAGS.teacher and FLAGS.student):
            raise ValueError("--method needs --teacher and --student.")
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    return resolve.resolve_recipe(
        FLAGS.recipe, method=FLAGS.method, teacher=FLAGS.teacher,
        student=FLAGS.student, changes=changes)


#: Teacher weights shipped in the repository: (model, dataset) -> path
#: relative to the repository root (weights/README.md).
SHIPPED_TEACHERS = {
    ("resnet20", "cifar100"): os.path.join(
        "weights", "cpu_protocol", "resnet20_cifar100.weights.h5"),
}


def shipped_teacher(recipe):
    """The shipped weights for the recipe's teacher and dataset, or None."""
    rel = SHIPPED_TEACHERS.get((recipe.teacher, recipe.data.dataset))
    if rel is None or recipe.num_classes != 100:
        return None
    path = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), rel)
    return path if os.path.exists(path) else None


def main(argv):
    del argv
    from keras_semkd import distribute
    from keras_semkd import plotting
    from keras_semkd import training

    recipe = resolve_recipe()
    teacher_top1 = None
    teacher_kind = "teacher (given weights)"
    run_dir = FLAGS.run_dir or os.path.join(FLAGS.output_dir, recipe.name)
    if FLAGS.resume_from and not FLAGS.run_dir:
        raise app.UsageError(
            "--resume_from starts a new run: give it its own --run_dir.")
    if FLAGS.resume_from and not FLAGS.teacher_weights:
        # The same teacher as the run continued (not a new quick one).
        with open(os.path.join(FLAGS.resume_from, training.CONFIG_FILE),
                  encoding="utf-8") as f:
            source = configs.Recipe.from_json(f.read())
        if source.teacher_weights:
            recipe = recipe.override(teacher_weights=source.teacher_weights)
    os.makedirs(run_dir, exist_ok=True)
    logging.info("Recipe:\n%s", recipe.to_json())
    teacher_path = os.path.join(run_dir, "teacher.weights.h5")
    shipped = (shipped_teacher(recipe)
               if FLAGS.shipped_teacher and recipe.teacher
               and not recipe.teacher_weights else None)
    if shipped:
        logging.info("No --teacher_weights: using the shipped %s teacher "
                     "%s (weights/README.md).", recipe.teacher, shipped)
        print(f"teacher {recipe.teacher}: shipped weights {shipped}")
        recipe = recipe.override(teacher_weights=shipped)
        teacher_kind = "teacher (shipped weights)"
    quick_teacher = recipe.teacher and not recipe.teacher_weights
    if quick_teacher:
        recipe = recipe.override(teacher_weights=teacher_path)
        teacher_kind = f"teacher (quick, {FLAGS.teacher_epochs} epoch(s))"
    strategy = distribute.make_strategy(FLAGS.strategy)
    # Checks the directory (lock, config) before anything is trained.
    runner = training.Runner(
        recipe, run_dir, checkpoint_every=FLAGS.checkpoint_every,
        strategy=strategy, resume_from=FLAGS.resume_from)
    with runner.lock():
        if quick_teacher and not os.path.exists(teacher_path):
            t_report = training.train_quick_teacher(
                recipe, FLAGS.teacher_epochs, teacher_path,
                os.path.join(run_dir, "teacher"), verbose=FLAGS.verbose)
            teacher_top1 = t_report["last"]["top1"]
            print(f"teacher {recipe.teacher} (quick, "
                  f"{FLAGS.teacher_epochs} epoch(s)): top-1 "
                  f"{teacher_top1:.4f} on {t_report['eval']['description']}")
        report = runner.run(verbose=FLAGS.verbose)
        if runner.chief:
            runner.student.save(os.path.join(run_dir, "student.keras"))
        data_note = (" (GENERATED data, not CIFAR-100)"
                     if report["data"].get("is_generated") else "")
        print(f"{recipe.name}: student {recipe.student} top-1 "
              f"last {report['last']['top1']:.4f}, best "
              f"{report['best_top1']:.4f}, top-5 "
              f"{report['last']['top5']:.4f} after {report['epochs_done']} "
              f"epoch(s){data_note}, on {report['eval']['description']}")
        curves = {f"{recipe.student} distilled":
                  os.path.join(run_dir, "history.csv")}
        alone_report = None
        if FLAGS.compare and recipe.teacher:
            alone_dir = os.path.join(run_dir, "student_alone")
            logging.info("The same student alone, same budget: %s",
                         alone_dir)
            alone_report = training.Runner(
                student_alone(recipe), alone_dir,
                checkpoint_every=FLAGS.checkpoint_every,
                strategy=strategy).run(verbose=FLAGS.verbose)
            curves[f"{recipe.student} alone"] = os.path.join(
                alone_dir, "history.csv")
        if runner.chief:
            plotting.plot_training_curves(
                curves, os.path.join(run_dir, "curves.png"),
                title=recipe.name, teacher_top1=teacher_top1)
        if alone_report is not None:
            if teacher_top1 is None:
                from keras_semkd import evaluation

                teacher_top1 = evaluation.evaluate(
                    runner.model.teacher, runner.eval_ds, verbose=0)["top1"]
            rows = comparison_rows(recipe, report, alone_report,
                                   teacher_top1, teacher_kind)
            table = comparison_table(rows, recipe, report)
            if runner.chief:
                with open(os.path.join(run_dir, "comparison.json"), "w",
                          encoding="utf-8") as f:
                    json.dump({"recipe": recipe.name, "rows": rows,
                               "gain_top1_points":
                                   rows[-1]["gain_top1_points"],
                               "eval": report["eval"],
                               "data": report["data"]}, f, indent=2,
                              default=str)
                with open(os.path.join(run_dir, "comparison.md"), "w",
                          encoding="utf-8") as f:
                    f.write(table + "\n")
            print(table)
    print(f"run directory: {run_dir}")


def student_alone(recipe):
    """The recipe's student trained alone: same seed, data, epochs and
    optimizer, no teacher, plain cross-entropy."""
    return dataclasses.replace(
        recipe, name=f"{recipe.name}-student_alone", teacher=None, terms=(),
        student_loss_weight=1.0, teacher_weights=None)


def _minutes(report):
    return sum(r.get("seconds", 0.0) for r in report["history"]) / 60.0


def comparison_rows(recipe, distilled, alone, teacher_top1,
                    teacher_kind="teacher"):
    """Rows of the comparison table: teacher, student alone, distilled."""
    methods = "+".join(t.name for t in recipe.terms) or "-"
    alone_top1 = alone["last"]["top1"]
    rows = [{"model": recipe.teacher, "training": teacher_kind,
             "top1": teacher_top1, "top5": None, "epochs": None,
             "minutes": None}]
    for report, training_kind in ((alone, "student alone"),
                                  (distilled, f"distilled ({methods})")):
        rows.append({
            "model": recipe.student, "training": training_kind,
            "top1": report["last"]["top1"], "top5": report["last"]["top5"],
            "epochs": report["epochs_done"], "minutes": _minutes(report),
            "gain_top1_points": 100.0 * (report["last"]["top1"]
                                         - alone_top1),
        })
    return rows


def comparison_table(rows, recipe, report):
    """The rows as a Markdown table with a one-line reading."""
    info = report["data"]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    lines = [
        f"{recipe.name}: {info.get('name')} "
        f"({'GENERATED data' if info.get('is_generated') else 'real data'}"
        f"), {recipe.epochs} epoch(s) of at most "
        f"{recipe.data.limit_train or info.get('num_examples')} training "
        "images, the same seed, data and optimizer for both students; "
        f"top-1 on {report['eval']['description']}.",
        "",
        "| model | training | top-1 | top-5 | epochs | minutes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['training']} | {fmt(r['top1'], '.4f')} | "
            f"{fmt(r['top5'], '.4f')} | {fmt(r['epochs'], 'd')} | "
            f"{fmt(r['minutes'], '.1f')} |")
    gain = rows[-1]["gain_top1_points"]
    lines += ["", f"distillation gain: {gain:+.2f} top-1 points over the "
              "student alone"]
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
