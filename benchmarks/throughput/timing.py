"""The synthetic batch, building and warming up peers, and the round-robin
timing with its summary statistics."""

import os
import statistics
import time

import numpy as np
from absl import flags
from absl import logging

from throughput import keras_peers
from throughput import torch_peers

FLAGS = flags.FLAGS


def synthetic_batch(batch_size, num_classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, num_classes, size=(batch_size,)).astype("int64")
    return x, y


BUILDERS = {
    "keras_kd": keras_peers.keras_kd,
    "keras_sakd": keras_peers.keras_sakd,
    "keras_kd_feat": keras_peers.keras_kd_feat,
    "keras_distillation": keras_peers.keras_distillation,
    "torch_kd": torch_peers.torch_kd,
    "teacher_infer": keras_peers.teacher_infer,
    "student_step": keras_peers.student_step,
    "torch_teacher_infer": torch_peers.torch_teacher_infer,
    "torch_student_step": torch_peers.torch_student_step,
}


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
