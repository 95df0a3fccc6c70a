"""Choosing a distribution strategy.

TensorFlow backend:
- `"auto"` (default): `tf.distribute.MirroredStrategy` over all visible GPUs
  when there is at least one, else no strategy (the CPU default).
- `"mirrored"`: MirroredStrategy over the visible GPUs (or the CPU).
- `"multi_worker"`: `tf.distribute.MultiWorkerMirroredStrategy`, configured
  from the `TF_CONFIG` environment variable (cluster + task).
- `"none"`: no strategy.

JAX backend: `"auto"`/`"data_parallel"` set `keras.distribution.DataParallel`
over the visible devices when there is more than one.

Batch and learning rate: recipes give the *global* batch size; each of R
replicas gets `batch_size / R` examples and the losses are reduced over the
global batch, so the same recipe gives the same update for any R. When you
change the global batch, scale the learning rate linearly
(`lr × new_batch / 64` for the CIFAR protocol; `scale_learning_rate`).
"""

import json
import os

import keras

KINDS = ("auto", "none", "mirrored", "multi_worker", "data_parallel")


def make_strategy(kind="auto"):
    """Returns a `tf.distribute.Strategy` or `None` (see module doc)."""
    if kind not in KINDS:
        raise ValueError(
            f"Unknown strategy {kind!r}. Known: {', '.join(KINDS)}"
        )
    if keras.backend.backend() == "jax":
        if kind in ("auto", "data_parallel"):
            import jax

            devices = jax.devices()
            if len(devices) > 1 or kind == "data_parallel":
                keras.distribution.set_distribution(
                    keras.distribution.DataParallel(devices=devices)
                )
        elif kind != "none":
            raise ValueError(
                f"Strategy {kind!r} needs the TensorFlow backend; under JAX "
                "use 'auto' or 'data_parallel'."
            )
        return None
    import tensorflow as tf

    if kind == "none" or kind == "data_parallel":
        return None
    if kind == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if gpus else None
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "The multi_worker strategy is configured from TF_CONFIG, which "
            "is not set. Example: TF_CONFIG='{\"cluster\": {\"worker\": "
            "[\"127.0.0.1:12345\", \"127.0.0.1:23456\"]}, \"task\": "
            "{\"type\": \"worker\", \"index\": 0}}'"
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief():
    """True for the process that writes checkpoints and exports: the only
    process, or TF_CONFIG's chief (or worker 0 when there is no chief)."""
    config = os.environ.get("TF_CONFIG")
    if not config:
        return True
    config = json.loads(config)
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if "chief" in cluster:
        return kind == "chief"
    return kind == "worker" and index == 0


def scale_learning_rate(base_lr, global_batch, base_batch=64):
    """Linear learning-rate scaling for a different global batch."""
    if global_batch <= 0 or base_batch <= 0:
        raise ValueError(
            f"Batch sizes must be > 0. Received: global_batch={global_batch},"
            f" base_batch={base_batch}"
        )
    return base_lr * global_batch / base_batch
