r"""The CPU accuracy protocol: resnet20 -> resnet8 on the real CIFAR-100.

One command runs the whole table (BENCHMARKS.md, "Accuracy, CPU protocol"):
student alone, KD, FitNet, AT, SAKD and its ablations, and KD under
`mixed_bfloat16`, each over 3 seeds, then writes the Markdown table, a JSON
summary and the plots:

    python experiments/cpu_protocol.py            # ~2 h on 2 CPU cores

The runs are the registered recipes `cpu_protocol-<variant>`
(`keras_semkd/configs/recipes.py`): resnet8, 4 epochs over the 50,000
training images, lr 0.05 (x0.1 at epoch 3), batch 64, SGD + momentum,
coupled weight decay 5e-4, the standard augmentation; top-1 on the 10,000
test images. The teacher (resnet20, 10 epochs) was trained once with the
recipe `cpu_protocol-teacher` and ships in the repo at
`weights/cpu_protocol/resnet20_cifar100.weights.h5`; if that file is
missing it is trained first (about 15 minutes) and written there.

Runs go `--workers` at a time (default 2), each a separate process with one
intra-op thread: on 2 cores two single-thread processes give about 1.5x the
images per second of one two-thread process for these small models. Every
run is a resumable run directory (`keras_semkd.training.Runner`), so
re-running the command after an interruption continues where it stopped and
skips finished runs. Progress (one line per started/finished run, with an
ETA) goes to stdout and to `<output_dir>/progress.log`; each run's Keras log
to `<output_dir>/<variant>/seed<k>/log.txt`.

    python experiments/cpu_protocol.py --variants=kd,sakd --seeds=0
    python experiments/cpu_protocol.py --report_only     # table + plots
    python experiments/cpu_protocol.py --smoke           # 1 short epoch each
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEACHER_WEIGHTS = os.path.join(
    "weights", "cpu_protocol", "resnet20_cifar100.weights.h5")

flags.DEFINE_string("output_dir", os.path.join("runs", "cpu_protocol"),
                    "Where run directories, the table and plots go.")
flags.DEFINE_list("variants", None,
                  "Variants to run (default: all of CPU_PROTOCOL_VARIANTS).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_integer("workers", 2, "Runs in parallel (processes).")
flags.DEFINE_integer("threads_per_worker", 1,
                     "Intra-op threads of each run process.")
flags.DEFINE_string("teacher_weights", None,
                    "Teacher weights (default: the shipped file, relative "
                    "to the repository root).")
flags.DEFINE_string("data_dir", None,
                    "CIFAR-100 location (default: ../shared/data copy).")
flags.DEFINE_bool("report_only", False,
                  "Only aggregate finished runs into the table and plots.")
flags.DEFINE_bool("smoke", False,
                  "One short epoch (640 train / 640 test images) per run, "
                  "in <output_dir>-smoke; checks every variant end to end.")
flags.DEFINE_string("results_md", None,
                    "Also write the Markdown table to this file.")
flags.DEFINE_string("plot_dir", None,
                    "Where the PNGs go (default: <output_dir>).")
flags.DEFINE_string("run_one", None,
                    "Internal: 'variant:seed' (or 'teacher') to train.")

FLAGS = flags.FLAGS


def _output_dir():
    return FLAGS.output_dir + ("-smoke" if FLAGS.smoke else "")


def _teacher_path():
    path = FLAGS.teacher_weights or os.path.join(_REPO,
                                                 DEFAULT_TEACHER_WEIGHTS)
    return path


def _recipe(variant, seed):
    from keras_semkd.configs import recipes
    from keras_semkd.configs.experiment import DataConfig

    recipe = recipes.cpu_protocol(variant, seed=seed)
    if FLAGS.smoke:
        recipe = dataclasses.replace(
            recipe, epochs=1,
            data=DataConfig(batch_size=64, limit_train=640, limit_eval=640),
        )
    return recipe


def _teacher_recipe():
    """`cpu_protocol-teacher` (1 short epoch under --smoke)."""
    from keras_semkd.configs import recipes
    from keras_semkd.configs.experiment import DataConfig

    recipe = recipes.cpu_protocol_teacher()
    if FLAGS.smoke:
        recipe = dataclasses.replace(
            recipe, epochs=1, data=DataConfig(limit_train=640,
                                              limit_eval=640))
    return recipe


def _run_dir(variant, seed):
    return os.path.join(_output_dir(), variant, f"seed{seed}")


def _finished(variant, seed):
    path = os.path.join(_run_dir(variant, seed), "report.json")
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    return report.get("epochs_done") == _recipe(variant, seed).epochs


def _build_teacher():
    from keras_semkd.configs import recipes
    from keras_semkd.distillers import build

    teacher = build.build_model(recipes.CPU_PROTOCOL_TEACHER, 100)
    path = _teacher_path()
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Teacher weights {path!r} not found: run "
            "experiments/cpu_protocol.py without --run_one to train them.")
    teacher.load_weights(path)
    teacher.trainable = False
    return teacher


def run_one(spec):
    """Trains one (variant, seed) run in this process."""
    from keras_semkd import training

    import keras

    if spec == "teacher":
        training.Runner(_teacher_recipe(), os.path.join(_output_dir(),
                                                        "teacher"),
                        checkpoint_every=200, deterministic=False,
                        data_dir=FLAGS.data_dir).run(verbose=2)
        return
    variant, seed = spec.split(":")
    recipe = _recipe(variant, int(seed))
    if recipe.mixed_precision:
        # The teacher runs under the recipe's policy too, as when
        # experiments/distill.py builds it from teacher_weights.
        keras.mixed_precision.set_global_policy(recipe.mixed_precision)
    teacher = None if recipe.teacher is None else _build_teacher()
    runner = training.Runner(recipe, _run_dir(variant, seed),
                             teacher=teacher, checkpoint_every=200,
                             data_dir=FLAGS.data_dir)
    report = runner.run(verbose=2)
    print(json.dumps({"top1": report["last"]["top1"]}))


class Progress:
    """Timestamped progress lines to stdout and `progress.log`."""

    def __init__(self, path):
        self.path = path
        self.started = time.time()

    def __call__(self, message):
        line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
                f"[{_fmt_time(time.time() - self.started)}] {message}")
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _fmt_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _train_teacher(log):
    """Trains the protocol teacher with its recipe and writes the weights
    to the shipped path."""
    import shutil

    path = _teacher_path()
    run_dir = os.path.join(_output_dir(), "teacher")
    log(f"teacher weights {path} missing: training cpu_protocol-teacher in "
        f"{run_dir}")
    # Its own process (this script with --run_one=teacher), as the runs.
    args = [sys.executable, os.path.abspath(__file__), "--run_one=teacher",
            f"--output_dir={FLAGS.output_dir}", f"--smoke={FLAGS.smoke}"]
    if FLAGS.data_dir:
        args.append(f"--data_dir={FLAGS.data_dir}")
    with open(os.path.join(_output_dir(), "teacher.log"), "a") as out:
        subprocess.run(args, check=True, stdout=out,
                       stderr=subprocess.STDOUT, env=dict(os.environ))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(os.path.join(run_dir, "checkpoints", "last.weights.h5"),
                    path)
    log(f"teacher written to {path}")


def run_all():
    from keras_semkd.configs import recipes

    out = _output_dir()
    os.makedirs(out, exist_ok=True)
    log = Progress(os.path.join(out, "progress.log"))
    variants = FLAGS.variants or list(recipes.CPU_PROTOCOL_VARIANTS)
    for v in variants:  # unknown names fail here, before any training
        recipes.cpu_protocol(v)
    seeds = [int(s) for s in FLAGS.seeds]
    if FLAGS.smoke and FLAGS.teacher_weights is None:
        FLAGS.teacher_weights = os.path.join(out, "teacher.weights.h5")
    needs_teacher = any(recipes.cpu_protocol(v).teacher for v in variants)
    if needs_teacher and not os.path.exists(_teacher_path()):
        _train_teacher(log)
    # Seeds outermost: a partial table still has every variant.
    jobs = [(v, s) for s in seeds for v in variants if not _finished(v, s)]
    total = len(jobs)
    log(f"{total} runs to do ({len(variants)} variants x {len(seeds)} "
        f"seeds, {len(variants) * len(seeds) - total} already finished), "
        f"{FLAGS.workers} at a time")
    env = dict(os.environ)
    env["TF_NUM_INTRAOP_THREADS"] = str(FLAGS.threads_per_worker)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    running, done, durations = {}, 0, []
    failures = []
    while jobs or running:
        while jobs and len(running) < FLAGS.workers:
            variant, seed = jobs.pop(0)
            run_dir = _run_dir(variant, seed)
            os.makedirs(run_dir, exist_ok=True)
            logf = open(os.path.join(run_dir, "log.txt"), "a")
            args = [sys.executable, os.path.abspath(__file__),
                    f"--run_one={variant}:{seed}",
                    f"--output_dir={FLAGS.output_dir}",
                    f"--smoke={FLAGS.smoke}"]
            if FLAGS.teacher_weights:
                args.append(f"--teacher_weights={FLAGS.teacher_weights}")
            if FLAGS.data_dir:
                args.append(f"--data_dir={FLAGS.data_dir}")
            proc = subprocess.Popen(args, stdout=logf,
                                    stderr=subprocess.STDOUT, env=env)
            running[proc] = (variant, seed, time.time(), logf)
            log(f"start  {variant} seed {seed}")
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            variant, seed, t0, logf = running.pop(proc)
            logf.close()
            done += 1
            took = time.time() - t0
            if proc.returncode != 0:
                failures.append((variant, seed))
                log(f"FAILED {variant} seed {seed} (exit {proc.returncode}); "
                    f"see {os.path.join(_run_dir(variant, seed), 'log.txt')}")
                continue
            durations.append(took)
            top1 = _read_report(variant, seed)["last"]["top1"]
            per_slot = sum(durations) / len(durations) / FLAGS.workers
            eta = per_slot * (len(jobs) + len(running))
            log(f"done   {variant} seed {seed}: top-1 {100 * top1:.2f} % "
                f"in {_fmt_time(took)} [{done}/{total}, ETA "
                f"{_fmt_time(eta)}]")
    report(log)
    if failures:
        raise SystemExit(f"{len(failures)} runs failed: {failures}")


def _read_report(variant, seed):
    with open(os.path.join(_run_dir(variant, seed), "report.json"),
              encoding="utf-8") as f:
        return json.load(f)


def _teacher_path_for_docs():
    path = _teacher_path()
    rel = os.path.relpath(path, _REPO)
    return path if rel.startswith("..") else rel


def _teacher_top1(data_dir):
    """Top-1 of the teacher weights on the test split (evaluated now)."""
    import keras
    from keras_semkd import data as data_lib

    teacher = _build_teacher()
    limit = 640 if FLAGS.smoke else None
    ds, _ = data_lib.get_dataset("cifar100", "test", 256, data_dir=data_dir)
    if limit:
        ds = ds.take(limit // 256 + 1)
    metric = keras.metrics.SparseCategoricalAccuracy()
    for x, y in ds:
        metric.update_state(y, teacher(x, training=False)["logits"])
    return float(metric.result())


def report(log=print):
    """Aggregates finished runs: Markdown table, summary JSON, plots."""
    import numpy as np
    from keras_semkd import plotting
    from keras_semkd.configs import recipes

    out = _output_dir()
    variants = FLAGS.variants or list(recipes.CPU_PROTOCOL_VARIANTS)
    rows, summary, curves = [], {}, {}
    for variant in variants:
        last, best, minutes, hist = [], [], [], []
        for seed in (int(s) for s in FLAGS.seeds):
            if not _finished(variant, seed):
                continue
            rep = _read_report(variant, seed)
            last.append(100 * rep["last"]["top1"])
            best.append(100 * rep["best_top1"])
            minutes.append(sum(h["seconds"] for h in rep["history"]) / 60)
            hist.append([100 * h["val_top1"] for h in rep["history"]])
        if not last:
            continue
        summary[variant] = {"top1_last": last, "top1_best": best,
                            "train_minutes": minutes}
        curves[variant] = np.asarray(hist)
        rows.append({
            "variant": variant,
            "seeds": str(len(last)),
            "top-1 (last epoch)": last,
            "top-1 (best epoch)": best,
            "min / run": minutes,
            "Δ vs student": (
                float(np.mean(last)) - float(np.mean(
                    summary["student"]["top1_last"]))
                if "student" in summary else ""),
        })
    if not rows:
        log("no finished runs to report")
        return None
    teacher_top1 = (100 * _teacher_top1(FLAGS.data_dir)
                    if os.path.exists(_teacher_path()) else float("nan"))
    table = plotting.results_table(rows)
    head = (f"Teacher resnet20 ({_teacher_path_for_docs()}): top-1 "
            f"{teacher_top1:.2f} % on the test split.\n\n")
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(head + table)
    if FLAGS.results_md:
        with open(FLAGS.results_md, "w", encoding="utf-8") as f:
            f.write(head + table)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"teacher_top1": teacher_top1, "runs": summary}, f,
                  indent=2)
    plot_dir = FLAGS.plot_dir or out
    os.makedirs(plot_dir, exist_ok=True)
    plot_results(summary, curves, teacher_top1, plot_dir)
    log("\n" + head + table)
    return table


def plot_results(summary, curves, teacher_top1, plot_dir):
    """`cpu_protocol_top1.png` (mean ± std bars with every seed as a dot)
    and `cpu_protocol_curves.png` (test top-1 per epoch, mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary)
    means = [np.mean(summary[n]["top1_last"]) for n in names]
    stds = [np.std(summary[n]["top1_last"], ddof=1)
            if len(summary[n]["top1_last"]) > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4))
    colors = ["#888888" if n == "student" else
              "#1f77b4" if n.startswith("sakd") else "#ff7f0e"
              for n in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colors,
           alpha=0.8)
    for i, n in enumerate(names):
        ys = summary[n]["top1_last"]
        ax.scatter([i] * len(ys), ys, color="black", s=10, zorder=3)
    lo = min(min(summary[n]["top1_last"]) for n in names)
    hi = max(max(summary[n]["top1_last"]) for n in names)
    ax.set_ylim(max(0.0, lo - 3), hi + 2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        [f"{n} (n={len(summary[n]['top1_last'])})" for n in names],
        rotation=30, ha="right")
    ax.set_ylabel("test top-1 (%), last epoch")
    ax.set_title(f"CPU protocol: resnet20 ({teacher_top1:.1f} %) -> "
                 f"resnet8, 4 epochs, mean ± std over seeds")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(plot_dir, "cpu_protocol_top1.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for n, arr in curves.items():
        ax.plot(np.arange(1, arr.shape[1] + 1), arr.mean(axis=0),
                marker="o", label=n)
    epochs = max(arr.shape[1] for arr in curves.values())
    ax.set_xticks(range(1, epochs + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(plot_dir, "cpu_protocol_curves.png"), dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    if FLAGS.run_one:
        run_one(FLAGS.run_one)
    elif FLAGS.report_only:
        report()
    else:
        run_all()


if __name__ == "__main__":
    app.run(main)
