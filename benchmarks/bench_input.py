"""Input-pipeline throughput: tf.data path vs. the NumPy / PyDataset path.

Measures augmented training images per second (pad-4 random crop + flip,
normalization, per-epoch shuffle, batching; prefetch for tf.data) of the
CIFAR-100 train split, as a model would consume them, without a model.

    python benchmarks/bench_input.py --batch_size=64 --steps=300 --repeats=5

Each repeat opens a fresh iterator (a new epoch), discards the first batch
(warm-up: shuffle-buffer fill, tracing) and times the next `--steps`
batches; the median over repeats is reported.  Loading the pickles (MD5
verification included) is timed separately and is not part of img/s.
"""

import os
import platform
import statistics
import subprocess
import time

from absl import app
from absl import flags
from absl import logging

from keras_semkd import data as kd_data
from keras_semkd.data import pipeline  # noqa: F401  (imports TF untimed)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None,
                    "CIFAR-100 copy (folder/archive/parent); default: "
                    "keras_semkd.data.default_cifar100_dir().")
flags.DEFINE_string("dataset", "cifar100", "Registered dataset name.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 300, "Timed batches per repeat.")
flags.DEFINE_integer("repeats", 5, "Repeats; the median is reported.")
flags.DEFINE_list("paths", ["tf", "numpy"], "Which pipelines to time.")
flags.DEFINE_integer("seed", 0, "Pipeline seed.")


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True,
                             check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time_tf(ds, steps):
    it = iter(ds.repeat())  # a fresh epoch; runs on past its end
    next(it)  # warm-up
    start = time.perf_counter()
    count = 0
    for _ in range(steps):
        x, _ = next(it)
        count += int(x.shape[0])
    return count / (time.perf_counter() - start)


def _time_numpy(batches, steps):
    n = len(batches)
    batches[0]  # warm-up
    start = time.perf_counter()
    count = 0
    for i in range(1, steps + 1):
        x, _ = batches[i % n]
        count += x.shape[0]
        if (i + 1) % n == 0:
            batches.on_epoch_end()
    return count / (time.perf_counter() - start)


def main(argv):
    del argv
    data_dir = FLAGS.data_dir
    if FLAGS.dataset == "cifar100" and data_dir is None:
        data_dir = kd_data.default_cifar100_dir()
        if data_dir is None:
            raise app.UsageError(
                "No CIFAR-100 copy found: pass --data_dir or set "
                f"{kd_data.DATA_ENV_VAR} (or use --dataset=synthetic).")
    kwargs = dict(data_dir=data_dir, seed=FLAGS.seed, augment=True,
                  shuffle=True)

    start = time.perf_counter()
    kd_data.load_split(FLAGS.dataset, "train", data_dir=data_dir)
    load_s = time.perf_counter() - start
    logging.info("Loaded %s train in %.2f s (cold, MD5 verified).",
                 FLAGS.dataset, load_s)

    results = {}
    if "tf" in FLAGS.paths:
        start = time.perf_counter()
        ds, info = kd_data.get_dataset(FLAGS.dataset, "train",
                                       FLAGS.batch_size, **kwargs)
        build_s = time.perf_counter() - start
        rates = [_time_tf(ds, FLAGS.steps)
                 for _ in range(FLAGS.repeats)]
        results["tf.data"] = (rates, build_s)
    if "numpy" in FLAGS.paths:
        start = time.perf_counter()
        batches, info = kd_data.get_numpy_dataset(
            FLAGS.dataset, "train", FLAGS.batch_size, **kwargs)
        build_s = time.perf_counter() - start
        rates = [_time_numpy(batches, FLAGS.steps)
                 for _ in range(FLAGS.repeats)]
        results["numpy/PyDataset"] = (rates, build_s)

    print(f"machine: {os.cpu_count()} CPUs ({_cpu_model()}), "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"dataset: {FLAGS.dataset} train ({info.num_examples} images, "
          f"source {info.source}), batch {FLAGS.batch_size}, "
          f"{FLAGS.steps} steps x {FLAGS.repeats} repeats, "
          f"cold load {load_s:.2f} s")
    for name, (rates, build_s) in results.items():
        print(f"{name:16s} median {statistics.median(rates):9,.0f} img/s  "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}; "
              f"build {build_s:.2f} s)")


if __name__ == "__main__":
    app.run(main)
