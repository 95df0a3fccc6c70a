r"""Training-step cost of SAKD against plain KD, in one process.

Builds the teacher and the student from the CIFAR zoo (random weights: the
cost of a step does not depend on them), one `Distiller` per configuration
(plain KD, and SAKD + KD for each uniformization mode), warms every one up,
then times `train_on_batch` on the same batch, alternating configurations
round-robin so that drifts of the machine hit all of them alike. Prints the
median step time, images/s and the ratio to KD.

Example (the measurement recorded in docs/method.md):

    python benchmarks/bench_step.py
    python benchmarks/bench_step.py --modes=spatial --repeats=30
"""

import os
import platform
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402


FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", "resnet32x4", "Teacher model name.")
flags.DEFINE_string("student", "resnet8x4", "Student model name.")
flags.DEFINE_integer("num_classes", 100, "Number of classes.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("warmup", 3, "Untimed steps per configuration.")
flags.DEFINE_integer("repeats", 15, "Timed steps per configuration.")
flags.DEFINE_list("modes", ["spatial", "channel", "grouped"],
                  "Uniformization modes to time (each as SAKD + KD).")
flags.DEFINE_list("stages", ["stage1", "stage2", "stage3"],
                  "Stage keys SAKD reads (same keys in both models).")
flags.DEFINE_list("extra", [],
                  "Extra SAKD variants: none (no semantic branch), "
                  "per_stage, separate.")
flags.DEFINE_integer("grid", 4, "Uniformization grid.")
flags.DEFINE_integer("seed", 0, "Seed of the random batch.")
flags.DEFINE_integer("term_repeats", 30,
                     "Timed calls of the isolated SAKD term (forward + "
                     "backward on fixed features); 0 skips this part.")


def build_configs():
    """Returns `[(label, distillation_losses)]`; KD first."""
    kd = {"name": "kd", "weight": 0.9}
    configs = [("kd", [kd])]
    # The first design's arguments (what this benchmark measured for
    # BENCHMARKS.md), with the grid and stages of the flags.
    from keras_semkd.configs.recipes import SAKD_V1

    base = {**SAKD_V1, "name": "sakd", "weight": 1.0,
            "teacher_keys": FLAGS.stages, "grid": FLAGS.grid,
            "warmup_epochs": 0}
    for mode in FLAGS.modes:
        alignment = "mse" if mode == "channel" else "kl"
        configs.append((f"sakd/{mode}",
                        [dict(base, mode=mode, alignment=alignment), kd]))
    for variant in FLAGS.extra:
        options = {"none": {"semantic": "none"},
                   "per_stage": {"head_scope": "per_stage"},
                   "separate": {"semantic": "separate"}}
        if variant not in options:
            raise app.UsageError(
                f"--extra takes none, per_stage, separate. Got {variant!r}"
            )
        configs.append((f"sakd/spatial/{variant}",
                        [dict(base, **options[variant]), kd]))
    return configs


def machine():
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}"


def main(argv):
    del argv
    import keras
    import numpy as np

    from keras_semkd import models
    from keras_semkd.distillers.distiller import Distiller
    from keras_semkd.losses import sakd  # noqa: F401  (registers "sakd")

    logging.info("backend=%s keras=%s machine=%s date=%s",
                 keras.backend.backend(), keras.__version__, machine(),
                 time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    rng = np.random.default_rng(FLAGS.seed)
    x = rng.standard_normal((FLAGS.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, FLAGS.num_classes, FLAGS.batch_size).astype("int32")

    teacher = models.get(FLAGS.teacher, num_classes=FLAGS.num_classes)
    runs = []
    for label, terms in build_configs():
        student = models.get(FLAGS.student, num_classes=FLAGS.num_classes)
        distiller = Distiller(teacher, student, terms,
                              student_loss_weight=0.1)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9)
        )
        for _ in range(FLAGS.warmup):
            distiller.train_on_batch(x, y)
        runs.append((label, distiller))
        logging.info("warmed up %s", label)

    times = {label: [] for label, _ in runs}
    cpu = {label: [] for label, _ in runs}
    progress = keras.utils.Progbar(FLAGS.repeats, unit_name="round")
    for r in range(FLAGS.repeats):
        # Rotate the start so that no configuration always runs first.
        order = runs[r % len(runs):] + runs[:r % len(runs)]
        for label, distiller in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            distiller.train_on_batch(x, y)
            times[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
        progress.update(r + 1)

    kd_time = statistics.median(times["kd"])
    kd_cpu = statistics.median(cpu["kd"])
    lines = [
        f"{FLAGS.teacher} -> {FLAGS.student}, batch {FLAGS.batch_size}, "
        f"backend {keras.backend.backend()}, {machine()}, "
        f"{time.strftime('%Y-%m-%d')}, {FLAGS.repeats} rounds after "
        f"{FLAGS.warmup} warm-up steps, stages {FLAGS.stages}, "
        f"grid {FLAGS.grid}",
        "wall: median step time; /KD: ratio of medians; paired: median "
        "over rounds of (step / KD step of the same round); cpu: median "
        "process CPU time per step (all threads) and its ratio to KD",
        f"{'configuration':<26}{'wall ms':>9}{'img/s':>8}{'/KD':>7}"
        f"{'paired':>8}{'cpu ms':>9}{'cpu/KD':>8}",
    ]
    for label, _ in runs:
        med = statistics.median(times[label])
        paired = statistics.median(
            a / b for a, b in zip(times[label], times["kd"])
        )
        med_cpu = statistics.median(cpu[label])
        lines.append(
            f"{label:<26}{1000 * med:>9.0f}{FLAGS.batch_size / med:>8.1f}"
            f"{med / kd_time:>7.3f}{paired:>8.3f}{1000 * med_cpu:>9.0f}"
            f"{med_cpu / kd_cpu:>8.3f}"
        )
    if FLAGS.term_repeats and keras.backend.backend() == "tensorflow":
        lines.append(
            "isolated SAKD term (forward + gradients w.r.t. the student "
            "features and the head, fixed features, tf.function):"
        )
        for label, distiller in runs[1:]:
            med, med_cpu = time_term(distiller, x, y)
            lines.append(
                f"{label:<26}{1000 * med:>9.1f} ms wall "
                f"({100 * med / kd_time:.2f}% of the KD step), "
                f"{1000 * med_cpu:.1f} ms cpu "
                f"({100 * med_cpu / kd_cpu:.2f}%)"
            )
    print("\n".join(lines))


def time_term(distiller, x, y):
    """Median (wall, cpu) time of the SAKD term alone (TF backend)."""
    import tensorflow as tf

    term = distiller.distillation_terms[0]
    t_out = distiller.teacher(x, training=False)
    s_out = distiller.student(x, training=False)
    teacher = [tf.constant(t_out[k]) for k in term.teacher_keys]
    student = [tf.Variable(s_out[k]) for k in term.student_keys]
    labels = tf.constant(y)
    variables = student + [v.value for v in term.trainable_variables]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(term(teacher, student, labels=labels,
                                       training=True))
        return loss, tape.gradient(loss, variables)

    for _ in range(3):
        step()
    times, cpu = [], []
    for _ in range(FLAGS.term_repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss, _ = step()
        float(loss)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu)


if __name__ == "__main__":
    app.run(main)
