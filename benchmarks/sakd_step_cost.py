r"""Training-step cost of the SAKD-protocol arms against KD, in one process.

For a protocol pair (`keras_semkd.configs.sakd_protocol.PAIRS`), builds one
Distiller per arm from the protocol's recipes (random teacher weights: the
cost does not depend on them; SAKD's prefit is not part of a step and
runs for 2 batches only), warms each up, then times `train_on_batch` on one batch,
round-robin with the start rotated every round. Prints, per arm, the median
wall and process-CPU milliseconds per step and the paired ratios to KD
(CPU time is the stable measure on a shared machine).

    python benchmarks/sakd_step_cost.py --pair=mbv2-r8 \
        --arms=kd,align_native,conf,twin
    python benchmarks/sakd_step_cost.py --pair=r20-r8 --arms=kd,sakd \
        --policy=mixed_bfloat16   # one policy per process
"""

import os
import platform
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("pair", "mbv2-r8", "Protocol pair.")
flags.DEFINE_list("arms", ["kd", "align_native", "conf", "twin"],
                  "Protocol arms (kd first: the reference).")
flags.DEFINE_integer("rounds", 12, "Timed rounds (one step per arm each).")
flags.DEFINE_integer("threads", 1, "TF intra-op threads.")
flags.DEFINE_enum("policy", "float32", ["float32", "mixed_bfloat16"],
                  "Keras dtype policy of every arm (a process-wide setting: "
                  "compare policies in separate processes).")


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv):
    del argv
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    import numpy as np

    keras.mixed_precision.set_global_policy(FLAGS.policy)

    from keras_semkd import training
    from keras_semkd.configs import sakd_protocol as spec
    from keras_semkd.data.sources import DatasetInfo  # noqa: F401
    from keras_semkd.distillers import build

    teacher_name, _ = spec.PAIRS[FLAGS.pair]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 100, 64).astype("int32")
    models = {}
    for arm in FLAGS.arms:
        recipe = spec.student_recipe(FLAGS.pair, arm, 0)
        keras.utils.set_random_seed(0)
        teacher = build.build_model(teacher_name, 100)
        model = build.build_distiller(recipe, teacher=teacher,
                                      num_train_examples=45000)
        model.compile(optimizer=build.sgd_optimizer(recipe.optimizer, 704),
                      metrics=training._metrics() if hasattr(
                          training, "_metrics") else None)
        targets = y
        if any(t.needs_indices for t in model.distillation_terms):
            targets = {"label": y, "index": np.arange(64, dtype="int32")}
        model.prefit_terms(x, y, batch_size=64, steps=2, verbose=0)
        for _ in range(3):
            model.train_on_batch(x, targets)
        models[arm] = (model, targets)
    wall = {a: [] for a in FLAGS.arms}
    cpu = {a: [] for a in FLAGS.arms}
    for r in range(FLAGS.rounds):
        order = FLAGS.arms[r % len(FLAGS.arms):] + FLAGS.arms[
            :r % len(FLAGS.arms)]
        for arm in order:
            model, targets = models[arm]
            c0, t0 = _cpu(), time.perf_counter()
            model.train_on_batch(x, targets)
            wall[arm].append(time.perf_counter() - t0)
            cpu[arm].append(_cpu() - c0)
    ref = FLAGS.arms[0]
    print(f"pair {FLAGS.pair}, {FLAGS.policy}, batch 64, "
          f"{FLAGS.threads} thread(s), "
          f"{FLAGS.rounds} rounds; {platform.processor() or platform.machine()}"
          f", {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"| arm | wall ms | CPU ms | paired wall / {ref} | "
          f"paired CPU / {ref} |")
    print("|---|---|---|---|---|")
    for arm in FLAGS.arms:
        pw = statistics.median(a / b for a, b in zip(wall[arm], wall[ref]))
        pc = statistics.median(a / b for a, b in zip(cpu[arm], cpu[ref]))
        print(f"| {arm} | {1000 * statistics.median(wall[arm]):.0f} | "
              f"{1000 * statistics.median(cpu[arm]):.0f} | {pw:.3f} | "
              f"{pc:.3f} |")


if __name__ == "__main__":
    app.run(main)
