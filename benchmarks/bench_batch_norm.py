r"""Fused vs Keras batch norm in the zoo: paired CPU cost of a KD step.

    python benchmarks/bench_batch_norm.py --pairs=resnet32x4:resnet8x4,resnet56:resnet20

For each pair, builds two KD Distillers (CE 0.1 + KD 0.9, T = 4, SGD 0.9,
coupled weight decay 5e-4) that differ only in the zoo's batch norm layer:
`keras_semkd.models.batch_norm.BatchNormalization(fused=False)` (Keras'
implementation) and `fused=True` (TF's fused kernel, the default), plus the
student's CE-only step alone. They are timed round-robin in one process on
one synthetic batch with `--threads` intra-op threads, as images per
CPU-second of the process (`time.process_time`), which depends much less on
other load of a shared machine than wall time. Prints a table and the
median ratio fused / Keras; `--out` writes JSON.
"""

import datetime
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

flags.DEFINE_list("pairs", ["resnet32x4:resnet8x4", "resnet56:resnet20"],
                  "teacher:student pairs.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 3, "Round-robin repeats (median).")
flags.DEFINE_integer("threads", 1, "Intra-op threads.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")

FLAGS = flags.FLAGS


def _build(teacher_name, student_name, fused, distill):
    import keras
    from keras_semkd import models
    from keras_semkd.distillers import Distiller
    from keras_semkd.models import base
    from keras_semkd.models.batch_norm import BatchNormalization

    original = base.BatchNormalization
    base.BatchNormalization = (
        lambda **kw: BatchNormalization(fused=fused, **kw))
    try:
        student = models.get(student_name, num_classes=100,
                             weight_decay=5e-4)
        teacher = models.get(teacher_name, num_classes=100) if distill \
            else None
    finally:
        base.BatchNormalization = original
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    if distill:
        model = Distiller(
            teacher, student,
            distillation_losses=[{"name": "kd", "weight": 0.9,
                                  "temperature": 4.0}],
            student_loss_weight=0.1)
        model.compile(optimizer=optimizer)
    else:
        model = keras.Model(student.inputs, student.output["logits"])
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
    return model


def bench_pair(pair):
    import numpy as np

    teacher_name, student_name = pair.split(":")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((FLAGS.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 100, FLAGS.batch_size)
    peers = {
        "kd_keras_bn": _build(teacher_name, student_name, False, True),
        "kd_fused_bn": _build(teacher_name, student_name, True, True),
        "student_keras_bn": _build(teacher_name, student_name, False, False),
        "student_fused_bn": _build(teacher_name, student_name, True, False),
    }
    for model in peers.values():
        for _ in range(2):
            model.train_on_batch(x, y)
    rates = {name: [] for name in peers}
    for _ in range(FLAGS.repeats):
        for name, model in peers.items():
            start = time.process_time()
            for _ in range(FLAGS.steps):
                model.train_on_batch(x, y)
            rates[name].append(
                FLAGS.steps * FLAGS.batch_size
                / (time.process_time() - start))
    result = {name: {"img_per_cpu_s": [round(r, 2) for r in v],
                     "median": round(statistics.median(v), 2)}
              for name, v in rates.items()}
    for kind in ("kd", "student"):
        result[f"{kind}_ratio_fused_over_keras"] = round(
            result[f"{kind}_fused_bn"]["median"]
            / result[f"{kind}_keras_bn"]["median"], 3)
    return result


def main(argv):
    del argv
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    payload = {
        "command": " ".join(["benchmarks/bench_batch_norm.py"]
                            + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "load_1min_before": os.getloadavg()[0],
        "pairs": {},
    }
    for pair in FLAGS.pairs:
        payload["pairs"][pair] = bench_pair(pair)
    payload["load_1min_after"] = os.getloadavg()[0]
    print(f"{payload['date']}  threads={FLAGS.threads}  batch="
          f"{FLAGS.batch_size}  load {payload['load_1min_before']:.1f} -> "
          f"{payload['load_1min_after']:.1f}")
    print("| pair | step | Keras BN img/CPU-s | fused BN img/CPU-s | "
          "fused / Keras |")
    print("|---|---|---:|---:|---:|")
    for pair, r in payload["pairs"].items():
        for kind, label in (("kd", "KD distill step"),
                            ("student", "student CE step")):
            print(f"| {pair} | {label} | {r[f'{kind}_keras_bn']['median']} "
                  f"| {r[f'{kind}_fused_bn']['median']} | "
                  f"{r[f'{kind}_ratio_fused_over_keras']} |")
    if FLAGS.out:
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    app.run(main)
