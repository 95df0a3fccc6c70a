r"""Distillation training throughput, side by side, on CPU.

Peers, each timed on the same synthetic batch held in memory (random
normal images, random labels: no input pipeline, no augmentation):

    keras_kd             our `Distiller`, KD (CE·0.1 + KD·0.9, T=4)
    keras_sakd           our `Distiller`, KD + SAKD (its default terms)
    keras_kd_feat        our `Distiller`, KD + plain MSE on "stage3": the
                         same objective as the keras_distillation peer
    keras_distillation   `keras.distillation.Distiller`: LogitsDistillation
                         (T=4) + FeatureDistillation (MSE) on the last stage
    torch_kd             RepDistiller's KD loop in PyTorch
                         (benchmarks/torch_reference.py), NCHW,
                         `torch.set_num_threads(physical cores)`
    torch_kd@1t          the same with one thread (`@<n>t`: n threads,
                         `@cl`: channels-last tensors; any torch peer)
    teacher_infer        Keras teacher inference alone (`predict`)
    student_step         Keras student CE-only training step alone (`fit`)
    torch_teacher_infer  PyTorch teacher inference alone
    torch_student_step   PyTorch student CE-only step alone

All peers of a pair live in ONE process and are timed round-robin (the order
rotates every repeat), `--repeats` times `--steps` steps each after
`--warmup` untimed steps; a run's rate is `steps · batch / seconds` and the
median over repeats is reported. Keras steps run through the standard
`fit`/`predict` loops; a callback stamps the end of every step and the
first step of every call (iterator and callback setup) is not timed.
Students train with SGD(0.05, momentum 0.9) and weight decay 5e-4
everywhere (the zoo's coupled L2 for our Distiller and the Keras student
step; `SGD(weight_decay=5e-4)` for keras.distillation, whose `compute_loss`
drops model regularization losses; `SGD(weight_decay=5e-4)` for PyTorch).

`--mixed_precision` adds, per pair, a fresh subprocess that builds our
Distiller in float32 and under `mixed_bfloat16` and times them round-robin.
`--memory` adds, per pair and peer, a fresh subprocess that runs that peer
alone and reports its peak RSS (Linux `VmHWM`; see `peak_rss_mib`) and
the RSS after imports. `--profile` records op self-times of keras_kd
(tf.profiler) and torch_kd (torch.profiler) after timing.

Every run also records the process CPU time, so img/CPU-s (less sensitive
to other processes on a shared machine) is reported next to img/s, and
the ratios are given both from medians and paired within each repeat.

Example (the measurements in docs/bench_throughput.md; pass one pair per
command to give each its own --steps):

    python benchmarks/bench_throughput.py --pairs=resnet32x4:resnet8x4 \
        --steps=5 --warmup=2 --repeats=3 --mixed_precision --memory \
        --profile --out=/tmp/bench/pair1.json
"""

import collections
import datetime
import gc
import glob
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PEERS = (
    "keras_kd", "keras_sakd", "keras_kd_feat", "keras_distillation",
    "torch_kd", "teacher_infer", "student_step", "torch_teacher_infer",
    "torch_student_step",
)
DEFAULT_PEERS = (
    "keras_kd", "keras_sakd", "keras_kd_feat", "keras_distillation",
    "torch_kd", "torch_kd@1t", "teacher_infer", "student_step",
    "torch_teacher_infer@1t", "torch_student_step@1t",
)
TARGETS = {
    "keras_kd_vs_torch_kd": (">=", 1.3),
    "keras_kd_vs_best_torch_kd": (">=", 1.3),
    "keras_kd_vs_keras_distillation": (">=", 1.5),
    "overhead_keras_kd": ("<=", 1.05),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("pairs", ["resnet32x4:resnet8x4", "resnet56:resnet20"],
                  "teacher:student pairs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 20, "Timed steps per run.")
flags.DEFINE_integer("warmup", 3, "Untimed steps per peer before timing "
                     "(tracing included).")
flags.DEFINE_integer("repeats", 3, "Runs per peer; the median is reported.")
flags.DEFINE_list("peers", list(DEFAULT_PEERS),
                  f"Peers to time, of {PEERS}; torch peers take options "
                  "after '@': '<n>t' (threads), 'cl' (channels-last), "
                  "joined by '_' (torch_kd@1t_cl).")
flags.DEFINE_bool("mixed_precision", False,
                  "Also time our Distiller under mixed_bfloat16 (fresh "
                  "subprocess per pair, against float32 in that process).")
flags.DEFINE_list("mixed_peers", ["keras_kd", "keras_sakd"],
                  "Peers timed by --mixed_precision.")
flags.DEFINE_bool("memory", False,
                  "Also measure the peak RSS of each peer alone (fresh "
                  "subprocess per pair and peer).")
flags.DEFINE_list("memory_peers", ["keras_kd", "keras_sakd",
                                   "keras_distillation", "torch_kd"],
                  "Peers measured by --memory.")
flags.DEFINE_integer("memory_steps", 3, "Timed steps in a --memory child.")
flags.DEFINE_bool("profile", False,
                  "Also profile keras_kd (tf.profiler op stats) and "
                  "torch_kd (torch.profiler) per pair, after timing.")
flags.DEFINE_integer("profile_steps", 3, "Steps recorded by --profile.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_list("plot_from", None,
                  "Only plot: result JSONs of earlier runs (--out) to draw "
                  "into --plot (no timing).")
flags.DEFINE_string("plot", None,
                    "Write a PNG of img/s and img/CPU-s per peer and pair "
                    "(from this run, or from --plot_from).")
flags.DEFINE_integer("num_classes", 100, "Number of classes.")
flags.DEFINE_integer("seed", 0, "Seed of weights and the synthetic batch.")
flags.DEFINE_integer("torch_threads", 0,
                     "torch.set_num_threads; 0: the physical cores.")
flags.DEFINE_string("jit_compile", "auto",
                    "`jit_compile` of the Keras peers: auto (Keras' "
                    "default: off on CPU-only TF), true or false.")
flags.DEFINE_enum("child", None, ["mixed", "memory"],
                  "Internal: run as a --mixed_precision / --memory child.")


# -- machine ------------------------------------------------------------------


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True,
                             check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def physical_cores():
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count()
    except ImportError:
        return os.cpu_count()


def _uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(
            f"{v:.2f}" for v in os.getloadavg())


def machine_info():
    info = {
        "nproc": os.cpu_count(),
        "physical_cores": physical_cores(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
    }
    from importlib import metadata

    for module, dists in (("tensorflow", ("tensorflow-cpu", "tensorflow")),
                          ("keras", ("keras",)), ("torch", ("torch",))):
        info[module] = None
        for dist in dists:
            try:
                info[module] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return info


def peak_rss_mib():
    """This process' peak resident set size in MiB.

    Linux' `VmHWM` (/proc/self/status): the high-water mark of this
    program's own address space. `getrusage(RUSAGE_SELF).ru_maxrss` is the
    fallback only: across fork + exec Linux carries the parent's peak into
    it, so a child of a 2 GB parent would report >= 2 GB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- synthetic batch ----------------------------------------------------------


def synthetic_batch(batch_size, num_classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, num_classes, size=(batch_size,)).astype("int64")
    return x, y


# -- Keras peers --------------------------------------------------------------


def _jit_compile():
    value = FLAGS.jit_compile.lower()
    if value == "auto":
        return "auto"
    return value in ("1", "true", "yes")


def _metrics():
    """top-1/top-5 as keras_semkd.training logs them. In the
    --mixed_precision child top-5 reads float32 logits: TF's `InTopKV2` has
    no bfloat16 kernel, so Keras' own top-5 metric fails on the bfloat16
    logits of a model built under mixed_bfloat16."""
    import keras
    from keras import ops

    if FLAGS.child != "mixed":
        top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
    else:
        def top5_float32(y_true, y_pred):
            return keras.metrics.sparse_top_k_categorical_accuracy(
                y_true, ops.cast(y_pred, "float32"), k=5)

        top5 = keras.metrics.MeanMetricWrapper(top5_float32, name="top5")
    return [keras.metrics.SparseCategoricalAccuracy(name="top1"), top5]


def _sgd(weight_decay=None):
    import keras

    return keras.optimizers.SGD(learning_rate=0.05, momentum=0.9,
                                weight_decay=weight_decay)


def _stage_mse_class():
    """A plain per-example MSE between equal-shaped feature maps, as
    `keras.distillation.FeatureDistillation(loss="mse")` computes it."""
    from keras import ops

    from keras_semkd.losses.base import DistillationLoss

    class StageMSE(DistillationLoss):
        def compute(self, teacher, student, labels=None, training=False,
                    indices=None):
            t = ops.cast(teacher[0], "float32")
            s = ops.cast(student[0], "float32")
            return ops.mean(ops.square(t - s), axis=(1, 2, 3))

    return StageMSE


def _layer_of(model, key):
    """Name of the layer producing a zoo model's named output `key`."""
    return model.output[key]._keras_history[0].name


def _step_clock():
    """A Keras callback stamping the end of every train/predict step."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps = []

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])  # the step's results are ready
            self.stamps.append((time.perf_counter(), time.process_time()))

        def on_predict_batch_end(self, batch, logs=None):
            self.stamps.append((time.perf_counter(), time.process_time()))

    return StepClock()


class KerasPeer:
    """A compiled Keras model timed through `fit` (or `predict`)."""

    def __init__(self, model, batch, predict=False):
        import tensorflow as tf

        self.model = model
        self.predict = predict
        x, y = batch
        x = tf.constant(x)
        y = tf.constant(y)
        if predict:
            self.data = tf.data.Dataset.from_tensors(x).repeat()
        else:
            self.data = tf.data.Dataset.from_tensors((x, y)).repeat()

    def run(self, steps):
        """Runs `steps + 1` steps; returns `(wall, cpu)`: the wall-clock
        seconds of each of the last `steps` steps and the process CPU
        seconds they took."""
        clock = _step_clock()
        if self.predict:
            self.model.predict(self.data, steps=steps + 1, verbose=0,
                               callbacks=[clock])
        else:
            self.model.fit(self.data, steps_per_epoch=steps + 1, epochs=1,
                           verbose=0, callbacks=[clock])
        wall, cpu = np.asarray(clock.stamps).T
        return [float(t) for t in np.diff(wall)], float(cpu[-1] - cpu[0])


def _zoo(name, weight_decay=0.0):
    from keras_semkd.distillers import build

    return build.build_model(name, FLAGS.num_classes, weight_decay)


def _sakd_available():
    try:
        import keras_semkd.losses.sakd  # noqa: F401  (registers "sakd")
    except ImportError as e:
        logging.warning("SAKD is not importable (%s): keras_sakd skipped.", e)
        return False
    return True


def _distiller(teacher_name, student_name, terms, batch):
    from keras_semkd.distillers import Distiller

    teacher = _zoo(teacher_name)
    student = _zoo(student_name, weight_decay=5e-4)
    model = Distiller(teacher, student, distillation_losses=terms,
                      student_loss_weight=0.1)
    model.compile(optimizer=_sgd(), metrics=_metrics(),
                  jit_compile=_jit_compile())
    return KerasPeer(model, batch)


KD = {"name": "kd", "weight": 0.9, "temperature": 4.0}


def keras_kd(teacher, student, batch):
    return _distiller(teacher, student, [KD], batch)


def keras_sakd(teacher, student, batch):
    if not _sakd_available():
        return None
    # The SAKD docstring: logit KD is not part of SAKD, add a "kd" term.
    return _distiller(teacher, student,
                      [KD, {"name": "sakd", "weight": 1.0}], batch)


def keras_kd_feat(teacher, student, batch):
    mse = _stage_mse_class()(teacher_keys="stage3", name="stage_mse")
    return _distiller(teacher, student, [KD, (mse, 1.0)], batch)


def keras_distillation(teacher_name, student_name, batch):
    import keras
    from keras import distillation

    from keras_semkd.training import classifier_view

    teacher = _zoo(teacher_name)
    student = _zoo(student_name)  # weight decay: in the optimizer
    t_layer, s_layer = _layer_of(teacher, "stage3"), _layer_of(student,
                                                               "stage3")
    model = distillation.Distiller(
        teacher=classifier_view(teacher),
        student=classifier_view(student),
        distillation_losses=[
            distillation.LogitsDistillation(temperature=4.0),
            distillation.FeatureDistillation(
                loss="mse", teacher_layer_name=t_layer,
                student_layer_name=s_layer,
            ),
        ],
        distillation_loss_weights=[1.0, 1.0],
        student_loss_weight=0.1,
    )
    model.compile(
        optimizer=_sgd(weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_metrics(), jit_compile=_jit_compile(),
    )
    return KerasPeer(model, batch)


def teacher_infer(teacher_name, student_name, batch):
    from keras_semkd.training import classifier_view

    model = classifier_view(_zoo(teacher_name))
    model.compile(jit_compile=_jit_compile())
    return KerasPeer(model, batch, predict=True)


def student_step(teacher_name, student_name, batch):
    import keras

    from keras_semkd.training import classifier_view

    model = classifier_view(_zoo(student_name, weight_decay=5e-4))
    model.compile(
        optimizer=_sgd(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_metrics(), jit_compile=_jit_compile(),
    )
    return KerasPeer(model, batch)


# -- PyTorch peers ------------------------------------------------------------


class TorchPeer:
    """A RepDistiller-style PyTorch step timed one call at a time."""

    def __init__(self, teacher_name, student_name, batch, part,
                 options=""):
        import torch

        import torch_reference

        self.threads = FLAGS.torch_threads or physical_cores()
        channels_last = False
        for option in filter(None, options.split("_")):
            if option == "cl":
                channels_last = True
            elif option.endswith("t") and option[:-1].isdigit():
                self.threads = int(option[:-1])
            else:
                raise app.UsageError(
                    f"Unknown torch peer option {option!r}: use '<n>t' or "
                    "'cl'.")
        torch.set_num_threads(self.threads)
        torch.manual_seed(FLAGS.seed)
        x, y = batch
        self.x = torch.from_numpy(np.ascontiguousarray(
            x.transpose(0, 3, 1, 2)))  # NCHW, as RepDistiller
        self.y = torch.from_numpy(y)
        teacher = torch_reference.get(teacher_name, FLAGS.num_classes)
        student = torch_reference.get(student_name, FLAGS.num_classes)
        if channels_last:
            fmt = torch.channels_last
            teacher = teacher.to(memory_format=fmt)
            student = student.to(memory_format=fmt)
            self.x = self.x.contiguous(memory_format=fmt)
        self.trainer = torch_reference.KDTrainer(teacher, student)
        self.step = {
            "distill": lambda: self.trainer.distill_step(self.x, self.y),
            "teacher": lambda: self.trainer.teacher_inference(self.x),
            "student": lambda: self.trainer.student_step(self.x, self.y),
        }[part]

    def run(self, steps):
        import torch

        torch.set_num_threads(self.threads)  # a process-wide setting
        times = []
        cpu = time.process_time()
        for _ in range(steps):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        return times, time.process_time() - cpu


def torch_kd(teacher, student, batch, options=""):
    return TorchPeer(teacher, student, batch, "distill", options)


def torch_teacher_infer(teacher, student, batch, options=""):
    return TorchPeer(teacher, student, batch, "teacher", options)


def torch_student_step(teacher, student, batch, options=""):
    return TorchPeer(teacher, student, batch, "student", options)


BUILDERS = {
    "keras_kd": keras_kd,
    "keras_sakd": keras_sakd,
    "keras_kd_feat": keras_kd_feat,
    "keras_distillation": keras_distillation,
    "torch_kd": torch_kd,
    "teacher_infer": teacher_infer,
    "student_step": student_step,
    "torch_teacher_infer": torch_teacher_infer,
    "torch_student_step": torch_student_step,
}


# -- timing -------------------------------------------------------------------


def build_peers(names, teacher, student, batch, suffix=""):
    """Builds and warms up each peer; returns `{label: peer}`."""
    peers = {}
    for name in names:
        start = time.perf_counter()
        base, _, options = name.partition("@")
        if options:
            peer = BUILDERS[base](teacher, student, batch, options)
        else:
            peer = BUILDERS[base](teacher, student, batch)
        if peer is None:
            continue
        peer.run(max(FLAGS.warmup, 1))
        logging.info("%s%s: built and warmed up in %.1f s", name, suffix,
                     time.perf_counter() - start)
        peers[name + suffix] = peer
    return peers


def time_round_robin(peers, steps, repeats, batch_size):
    """Times every peer `repeats` times, rotating the order each round."""
    labels = list(peers)
    runs = {label: [] for label in labels}
    for r in range(repeats):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            times, cpu = peers[label].run(steps)
            runs[label].append((times, cpu, os.getloadavg()[0]))
            logging.info("repeat %d/%d %-24s %8.1f img/s (%.0f%% CPU)",
                         r + 1, repeats, label,
                         batch_size * len(times) / sum(times),
                         100.0 * cpu / sum(times))
    return {label: summarize(r, batch_size) for label, r in runs.items()}


def summarize(runs, batch_size):
    """Median rates of the runs `[(step_seconds, cpu_seconds, load)]`."""
    rates = [batch_size * len(t) / sum(t) for t, _, _ in runs]
    cpu_rates = [batch_size * len(t) / max(c, 1e-9) for t, c, _ in runs]
    all_steps = [s for t, _, _ in runs for s in t]
    median_rate = statistics.median(rates)
    return {
        "img_per_s": [round(r, 2) for r in rates],
        "median_img_per_s": round(median_rate, 2),
        "median_step_ms": round(1000.0 * batch_size / median_rate, 2),
        "per_step_median_ms": round(1000.0 * statistics.median(all_steps),
                                    2),
        # Images per CPU-second of this process (all its threads): less
        # sensitive to other processes' load than wall-clock img/s.
        "img_per_cpu_s": [round(r, 2) for r in cpu_rates],
        "median_img_per_cpu_s": round(statistics.median(cpu_rates), 2),
        "cpu_utilization": [round(c / sum(t), 2) for t, c, _ in runs],
        "load_1min": [round(load, 2) for _, _, load in runs],
    }


def ratios(results, key="median_img_per_s", suffix="", repeat=None):
    """The comparisons of docs/bench_throughput.md, from median rates
    (`key`; `suffix` is appended to every name), or from the rates of one
    round-robin `repeat` (`key` then names the list of rates)."""

    def rate(label):
        value = results.get(label, {}).get(key)
        if repeat is not None and value is not None:
            value = value[repeat] if repeat < len(value) else None
        return value

    def step(label):
        r = rate(label)
        return None if r is None else 1.0 / r

    out = {}
    torch_kd = [label for label in results
                if label.partition("@")[0] == "torch_kd"]
    for ours in ("keras_kd", "keras_sakd", "keras_kd_feat"):
        for peer in torch_kd + ["keras_distillation", "keras_kd"]:
            if ours != peer and rate(ours) and rate(peer):
                out[f"{ours}_vs_{peer}{suffix}"] = round(
                    rate(ours) / rate(peer), 3)
    if rate("keras_kd") and torch_kd:
        best = max(torch_kd, key=rate)
        out[f"best_torch_kd{suffix}"] = best
        out[f"keras_kd_vs_best_torch_kd{suffix}"] = round(
            rate("keras_kd") / rate(best), 3)
    for distill in ("keras_kd", "keras_sakd", "keras_kd_feat"):
        if step(distill) and step("teacher_infer") and step("student_step"):
            out[f"overhead_{distill}{suffix}"] = round(
                step(distill) / (step("teacher_infer")
                                 + step("student_step")), 3)
    for label in torch_kd:
        options = label.partition("@")[2]
        options = "@" + options if options else ""
        teacher = f"torch_teacher_infer{options}"
        student = f"torch_student_step{options}"
        if step(label) and step(teacher) and step(student):
            out[f"overhead_{label}{suffix}"] = round(
                step(label) / (step(teacher) + step(student)), 3)
    for part in ("teacher_infer", "student_step"):
        for label in results:
            if label.partition("@")[0] == f"torch_{part}" and rate(part):
                out[f"{part}_keras_vs_{label}{suffix}"] = round(
                    rate(part) / rate(label), 3)
    return out


def paired_ratios(results):
    """Median over repeats of the ratios within each round-robin repeat:
    peers of one repeat ran minutes apart at most, so a drift of the
    machine's load between repeats cancels out of these."""
    repeats = min(len(r["img_per_s"]) for r in results.values())
    per_repeat = [ratios(results, "img_per_s", repeat=r)
                  for r in range(repeats)]
    out = {}
    for name in per_repeat[0] if per_repeat else ():
        values = [d.get(name) for d in per_repeat]
        if all(isinstance(v, float) for v in values):
            out[name] = round(statistics.median(values), 3)
    return out


def check_targets(pair_ratios):
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = pair_ratios.get(key)
        if value is None:
            continue
        hit = value >= bound if op == ">=" else value <= bound
        out[key] = {"value": value, "target": f"{op} {bound}",
                    "hit": bool(hit)}
    return out


def _parse_pair(pair):
    teacher, sep, student = pair.partition(":")
    if not sep or not teacher or not student:
        raise app.UsageError(
            f"--pairs entries are teacher:student. Received: {pair!r}")
    return teacher, student


def _release(peers):
    peers.clear()
    gc.collect()
    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session()


def bench_pair(pair, peers):
    teacher, student = _parse_pair(pair)
    batch = synthetic_batch(FLAGS.batch_size, FLAGS.num_classes, FLAGS.seed)
    if any(p.startswith("keras") or p in ("teacher_infer", "student_step")
           for p in peers):
        import keras

        keras.utils.set_random_seed(FLAGS.seed)
    built = build_peers(peers, teacher, student, batch)
    results = time_round_robin(built, FLAGS.steps, FLAGS.repeats,
                               FLAGS.batch_size)
    profiles = {}
    if FLAGS.profile:
        if "keras_kd" in built:
            profiles["keras_kd"] = profile_keras(
                built["keras_kd"], teacher, student, FLAGS.profile_steps)
        if "torch_kd" in built:
            profiles["torch_kd"] = profile_torch(built["torch_kd"],
                                                 FLAGS.profile_steps)
    _release(built)
    pair_ratios = ratios(results)
    pair_ratios.update(ratios(results, "median_img_per_cpu_s", "_per_cpu_s"))
    paired = paired_ratios(results)
    entry = {"peers": results, "ratios": pair_ratios,
             "paired_ratios": paired,
             "targets": check_targets(pair_ratios),
             "targets_paired": check_targets(paired)}
    if profiles:
        entry["profile"] = profiles
    return entry


# -- profiles -----------------------------------------------------------------


def _shares(counter, total, top=None):
    items = counter.most_common(top)
    return {k: {"ms_per_step": round(v, 2), "share": round(v / total, 3)}
            for k, v in items}


def profile_keras(peer, teacher, student, steps):
    """Op self-times of `steps` Keras steps (tf.profiler's
    framework_op_stats: the 500 ops with the largest self time, summed
    over threads), by part of the step and by op type."""
    import tensorflow as tf
    from tensorflow.python.profiler.internal import (
        _pywrap_profiler_plugin as plugin,
    )

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        peer.run(steps)
        tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                          recursive=True)
        data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats",
                                               {})
    if not ok:
        return {"error": str(data[:200])}
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    is_teacher = re.compile(rf"^{re.escape(teacher)}(_\d+)?$").match
    is_student = re.compile(rf"^{re.escape(student)}(_\d+)?$").match
    parts, types = collections.Counter(), collections.Counter()
    for row in table["rows"]:
        op = dict(zip(cols, [c["v"] if c else None for c in row["c"]]))
        if op["type"] == "IDLE":
            continue
        ms = op["total_self_time"] / 1000.0 / (steps + 1)
        scope = op["operation"].split("/")
        if scope[0] == "StatefulPartitionedCall":
            scope = scope[1:]
        if scope[0] == "gradient_tape":
            part = ("student backward" if len(scope) > 1
                    and is_student(scope[1]) else "backward, other")
        elif is_teacher(scope[0]):
            part = "teacher forward"
        elif is_student(scope[0]):
            part = "student forward"
        elif scope[0].lower().startswith("sgd"):
            part = "optimizer"
        else:
            part = "loss, metrics, weight decay, other"
        parts[part] += ms
        types[op["type"]] += ms
    total = sum(parts.values())
    return {"tool": "tf.profiler framework_op_stats", "steps": steps + 1,
            "parts": _shares(parts, total),
            "op_types": _shares(types, total, top=10)}


def profile_torch(peer, steps):
    """Self CPU time of `steps` PyTorch steps by ATen op (torch.profiler)."""
    import torch

    torch.set_num_threads(peer.threads)
    with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            peer.step()
    ops = collections.Counter()
    for event in prof.key_averages():
        ops[event.key] += event.self_cpu_time_total / 1000.0 / steps
    total = sum(ops.values())
    return {"tool": "torch.profiler self CPU time", "steps": steps,
            "op_types": _shares(ops, total, top=10)}


# -- children: mixed precision and memory -------------------------------------


def child_mixed(pair):
    """float32 and mixed_bfloat16 Distillers in one process, round-robin."""
    import keras

    teacher, student = _parse_pair(pair)
    batch = synthetic_batch(FLAGS.batch_size, FLAGS.num_classes, FLAGS.seed)
    keras.utils.set_random_seed(FLAGS.seed)
    peers = build_peers(FLAGS.peers, teacher, student, batch)
    # Layers read the global policy when built; the float32 peers above
    # are built (and traced) already.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    peers.update(build_peers(FLAGS.peers, teacher, student, batch,
                             suffix="@mixed_bfloat16"))
    results = time_round_robin(peers, FLAGS.steps, FLAGS.repeats,
                               FLAGS.batch_size)
    out = {}
    for name in FLAGS.peers:
        low = results.get(f"{name}@mixed_bfloat16")
        full = results.get(name)
        if low and full:
            out[f"{name}_bf16_vs_fp32"] = round(
                low["median_img_per_s"] / full["median_img_per_s"], 3)
    return {"peers": results, "ratios": out}


def child_memory(pair):
    """One peer alone: RSS after imports, then peak RSS over build,
    warm-up and `--memory_steps` steps."""
    (name,) = FLAGS.peers
    teacher, student = _parse_pair(pair)
    if name.startswith("torch"):
        import torch  # noqa: F401

        import torch_reference  # noqa: F401
    else:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        import keras_semkd  # noqa: F401
        from keras_semkd.distillers import build  # noqa: F401

        keras.utils.set_random_seed(FLAGS.seed)
    after_imports = peak_rss_mib()
    batch = synthetic_batch(FLAGS.batch_size, FLAGS.num_classes, FLAGS.seed)
    peers = build_peers([name], teacher, student, batch)
    if not peers:
        return {}
    times, _ = peers[name].run(FLAGS.memory_steps)
    peak = peak_rss_mib()
    return {
        "rss_after_imports_mib": round(after_imports, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_over_imports_mib": round(peak - after_imports, 1),
        "img_per_s_alone": round(FLAGS.batch_size * len(times) / sum(times),
                                 2),
    }


def run_child(kind, pair, peers, steps, repeats):
    """Runs this script as a fresh child process; returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "child.json")
        cmd = [
            sys.executable, os.path.abspath(__file__), f"--child={kind}",
            f"--pairs={pair}", f"--peers={','.join(peers)}",
            f"--batch_size={FLAGS.batch_size}", f"--steps={steps}",
            f"--warmup={FLAGS.warmup}", f"--repeats={repeats}",
            f"--memory_steps={FLAGS.memory_steps}",
            f"--num_classes={FLAGS.num_classes}", f"--seed={FLAGS.seed}",
            f"--torch_threads={FLAGS.torch_threads}",
            f"--jit_compile={FLAGS.jit_compile}", f"--out={out}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            logging.error("child %s %s %s failed:\n%s", kind, pair, peers,
                          proc.stderr[-3000:])
            return {"error": proc.stderr[-500:]}
        with open(out, encoding="utf-8") as f:
            return json.load(f)


# -- report -------------------------------------------------------------------


def format_table(pair, entry):
    rows = [f"\n{pair}  (batch {FLAGS.batch_size}, {FLAGS.steps} steps x "
            f"{FLAGS.repeats} repeats, median)",
            f"{'peer':<30}{'img/s':>8}{'ms/step':>9}{'img/CPU-s':>11}"
            f"{'CPU':>6}   runs (img/s)"]
    for label, r in entry["peers"].items():
        runs = " ".join(f"{v:.0f}" for v in r["img_per_s"])
        util = statistics.median(r["cpu_utilization"])
        rows.append(f"{label:<30}{r['median_img_per_s']:>8.1f}"
                    f"{r['median_step_ms']:>9.0f}"
                    f"{r['median_img_per_cpu_s']:>11.1f}{util:>6.2f}   "
                    f"{runs}")
    for key, value in entry.get("ratios", {}).items():
        if isinstance(value, str):
            rows.append(f"  {key:<40}{value:>8}")
        else:
            rows.append(f"  {key:<40}{value:>8.3f}")
    for group, how in (("targets", "of medians"),
                       ("targets_paired", "paired per repeat")):
        for key, t in entry.get(group, {}).items():
            rows.append(f"  target {key} ({how}): {t['value']:.3f} (want "
                        f"{t['target']}) -> {'HIT' if t['hit'] else 'MISS'}")
    for label, prof in entry.get("profile", {}).items():
        for group in ("parts", "op_types"):
            if group in prof:
                rows.append(f"  profile {label} {group}: " + ", ".join(
                    f"{k} {v['ms_per_step']:.0f} ms ({v['share']:.0%})"
                    for k, v in list(prof[group].items())[:6]))
    for label, m in entry.get("memory", {}).items():
        if "peak_rss_mib" in m:
            rows.append(f"  peak RSS {label:<28}{m['peak_rss_mib']:>9.0f} MiB"
                        f" (+{m['peak_over_imports_mib']:.0f} over imports)")
    return "\n".join(rows)


def _write(payload):
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)),
                    exist_ok=True)
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
        logging.info("Wrote %s", FLAGS.out)


def param_counts(pairs):
    """Our models' and the PyTorch reference's parameter counts."""
    try:
        import torch_reference
    except ImportError:
        return {}
    from keras_semkd.distillers import build

    out = {}
    for name in sorted({m for p in pairs for m in _parse_pair(p)}):
        if name not in torch_reference.ARCHITECTURES:
            continue
        ours = build.build_model(name, FLAGS.num_classes)
        trainable = sum(int(np.prod(w.shape)) for w in ours.trainable_weights)
        theirs = torch_reference.count_parameters(
            torch_reference.get(name, FLAGS.num_classes))
        out[name] = {"keras": [trainable, ours.count_params()],
                     "torch": list(theirs),
                     "equal": [trainable, ours.count_params()] == list(theirs)}
    return out


def plot_results(payloads, path):
    """Bars of median img/s (left) and img per CPU-second (right) per peer,
    one group per pair, from result payloads (`--out` JSONs); the
    `mixed_bfloat16` child's peers are drawn as `<peer>@mixed_bfloat16`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = {}
    for payload in payloads:
        for pair, entry in payload["pairs"].items():
            peers = dict(entry["peers"])
            mixed = (entry.get("mixed_precision") or {}).get("peers", {})
            for name, stats in mixed.items():
                if "@" in name:  # the child's float32 peers repeat ours
                    peers[name] = stats
            pairs[pair] = (peers, payload.get("date", ""))
    if not pairs:
        raise ValueError("No benchmark results to plot.")
    fig, axes = plt.subplots(len(pairs), 2, squeeze=False,
                             figsize=(12, 3.2 * len(pairs)))
    for row, (pair, (peers, date)) in enumerate(pairs.items()):
        names = list(peers)
        for col, (key, label) in enumerate((
                ("median_img_per_s", "img/s (median of repeats)"),
                ("median_img_per_cpu_s", "img per CPU-second"))):
            ax = axes[row][col]
            values = [peers[n].get(key, 0.0) or 0.0 for n in names]
            colors = ["#1f77b4" if n.startswith("keras_kd")
                      or n.startswith("keras_sakd") else
                      "#d62728" if n.startswith("torch") else
                      "#2ca02c" if n == "keras_distillation" else "#999999"
                      for n in names]
            ax.barh(range(len(names)), values, color=colors)
            ax.set_yticks(range(len(names)))
            ax.set_yticklabels(names, fontsize=8)
            ax.invert_yaxis()
            for i, v in enumerate(values):
                ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
            ax.set_xlabel(label)
            ax.set_title(f"{pair}, batch 64 ({date[:10]})", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    unknown = sorted({p.partition("@")[0] for p in FLAGS.peers}
                     - set(PEERS))
    if unknown:
        raise app.UsageError(f"Unknown peers {unknown}; known: {PEERS}")
    if FLAGS.plot_from:
        if not FLAGS.plot:
            raise app.UsageError("--plot_from needs --plot=<file.png>.")
        payloads = []
        for path in FLAGS.plot_from:
            with open(path, encoding="utf-8") as f:
                payloads.append(json.load(f))
        plot_results(payloads, FLAGS.plot)
        print(f"wrote {FLAGS.plot}")
        return
    if FLAGS.child == "mixed":
        _write(child_mixed(FLAGS.pairs[0]))
        return
    if FLAGS.child == "memory":
        _write(child_memory(FLAGS.pairs[0]))
        return
    start = time.perf_counter()
    payload = {
        "command": " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "machine": machine_info(),
        "uptime_before": _uptime(),
        "config": {k: FLAGS[k].value for k in (
            "pairs", "batch_size", "steps", "warmup", "repeats", "peers",
            "mixed_precision", "mixed_peers", "memory", "memory_peers",
            "memory_steps",
            "num_classes", "seed", "jit_compile", "profile",
            "profile_steps")},
        "torch_threads": FLAGS.torch_threads or physical_cores(),
        "input": "synthetic: one random-normal batch and random labels, "
                 "held in memory (no input pipeline)",
        "pairs": {},
    }
    if any(p.startswith("torch") for p in FLAGS.peers):
        payload["param_counts"] = param_counts(FLAGS.pairs)
    for pair in FLAGS.pairs:
        logging.info("== %s", pair)
        entry = bench_pair(pair, FLAGS.peers)
        payload["pairs"][pair] = entry
        _write(payload)
    for pair in FLAGS.pairs:
        entry = payload["pairs"][pair]
        if FLAGS.mixed_precision:
            logging.info("== %s: mixed_bfloat16 child", pair)
            entry["mixed_precision"] = run_child(
                "mixed", pair, FLAGS.mixed_peers, FLAGS.steps, FLAGS.repeats)
        if FLAGS.memory:
            entry["memory"] = {}
            for peer in FLAGS.memory_peers:
                if peer not in FLAGS.peers:
                    continue
                logging.info("== %s: memory child %s", pair, peer)
                entry["memory"][peer] = run_child(
                    "memory", pair, [peer], FLAGS.memory_steps, 1)
        _write(payload)
    payload["uptime_after"] = _uptime()
    payload["wall_s"] = round(time.perf_counter() - start, 1)
    _write(payload)
    if FLAGS.plot:
        plot_results([payload], FLAGS.plot)
    print(f"machine: {payload['machine']['nproc']} CPUs "
          f"({payload['machine']['cpu_model']}); torch threads "
          f"{payload['torch_threads']}; input: {payload['input']}")
    print(f"uptime before: {payload['uptime_before']}")
    print(f"uptime after:  {payload['uptime_after']}")
    for name, counts in payload.get("param_counts", {}).items():
        print(f"params {name}: keras {counts['keras']} torch "
              f"{counts['torch']} equal={counts['equal']}")
    for pair, entry in payload["pairs"].items():
        print(format_table(pair, entry))
        mixed = entry.get("mixed_precision")
        if mixed and "peers" in mixed:
            print(format_table(f"{pair} [fp32 vs mixed_bfloat16 child]",
                               mixed))
    print(f"\nwall time {payload['wall_s']:.0f} s")


if __name__ == "__main__":
    app.run(main)
