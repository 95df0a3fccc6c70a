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

Several machines (`"multi_worker"`): every worker runs the same program with
its own `TF_CONFIG` and builds the same *global-batch* `tf.data` pipeline;
`prepare_dataset` makes Keras split each global batch by example across
the workers (`AutoShardPolicy.DATA` after `tf.distribute`'s rebatching), so
a global step sees exactly the batch a single worker would see. Only the
chief (`is_chief`) writes files. See docs/distributed.md.
"""

import contextlib
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
    _check_tf_config(os.environ["TF_CONFIG"])
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise RuntimeError(
            "MultiWorkerMirroredStrategy must be created before any other "
            "TensorFlow work in the process (building a model or dataset, "
            "running an op): call make_strategy('multi_worker') first. "
            f"Underlying error: {e}"
        ) from e
    return strategy


def _check_tf_config(text):
    """Raises `ValueError` for a TF_CONFIG that cannot configure workers."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({e}). Received: TF_CONFIG={text!r}"
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(
            "TF_CONFIG needs a 'cluster' dict (job -> list of host:port) and "
            f"a 'task' dict (type, index). Received: TF_CONFIG={text!r}"
        )
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not (
            0 <= index < len(cluster[kind])):
        raise ValueError(
            f"TF_CONFIG's task {task} is not in its cluster {cluster}. "
            f"Received: TF_CONFIG={text!r}"
        )


def num_workers(strategy):
    """The number of worker processes `strategy` spans (1 for none, for
    `MirroredStrategy` and for a single-worker MWMS)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, ())) for job in ("chief", "worker")))


def prepare_dataset(dataset, strategy):
    """Makes a *global-batch* `tf.data.Dataset` split by example across
    the workers of `strategy`.

    Keras `fit`/`evaluate` distribute a dataset with
    `strategy.experimental_distribute_dataset`: each worker builds the
    whole pipeline, `tf.distribute` rebatches every global batch of `B`
    into `num_replicas_in_sync` pieces, then auto-sharding keeps this
    worker's pieces. With `AutoShardPolicy.DATA` that is this worker's
    share of *every* global batch (worker `i` of `W` gets examples
    `[i·B/W, (i+1)·B/W)` of each batch, with one replica per worker), so a
    step updates with exactly the single-worker batch, and the per-batch
    augmentation seeds are the same. The policy is set explicitly rather than
    left to `AUTO`, which would shard a file-based source (TFRecords) by
    *file* instead: every worker would then draw batches from different
    files and the global batch would no longer be the single-worker one.

    Returns `dataset` unchanged when there is no strategy or it spans one
    worker (a single worker is not sharded at all).
    """
    if strategy is None or num_workers(strategy) <= 1:
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


def check_same_on_all_workers(strategy, values, what):
    """Raises `ValueError` on every worker unless all workers of
    `strategy` passed the same integer `values` (a collective: every
    worker must call it). A no-op for a single worker."""
    if strategy is None or num_workers(strategy) <= 1:
        return
    import tensorflow as tf

    local = tf.constant([[int(v) for v in values]], tf.int64)
    gathered = strategy.gather(strategy.run(lambda: local), axis=0).numpy()
    if (gathered != gathered[:1]).any():
        raise ValueError(
            f"The workers disagree on {what}: {gathered.tolist()} (one row "
            "per replica). In a multi-worker run every worker must see the "
            "same run directory (shared storage: the chief writes, all "
            "read) or all must start fresh."
        )


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


def _multi_worker(strategy):
    import tensorflow as tf

    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and num_workers(strategy) > 1)


_FIXES = {"depth": 0, "originals": None}


@contextlib.contextmanager
def multi_worker_fixes(strategy):
    """Works around two failures of Keras 3's TensorFlow trainer under a
    `MultiWorkerMirroredStrategy` spanning several workers (seen with
    Keras 3.15 / TF 2.21; reported upstream as keras-team/keras#20585 and
    tensorflow/tensorflow#72388), *only while the block runs* and only
    when `strategy` spans several workers: for any other strategy (or
    none) it changes nothing. On exit the Keras internals are restored
    (nested blocks are counted), so nothing outside the block -- other
    models, other strategies in the process -- sees a patched Keras.
    `training.Runner.run` trains inside it; wrap your own `fit` /
    `evaluate` under a multi-worker strategy the same way:

        with distribute.multi_worker_fixes(strategy):
            distiller.fit(ds, epochs=...)

    1. `fit`/`evaluate` build the model symbolically from a first batch,
       which they all-reduce across workers with `strategy.reduce("MEAN",
       (x, y, ...))`; MWMS cannot reduce a nested structure and fails
       ("Attempt to convert a value (PerReplica...)"). Only shapes and
       dtypes are used, so this worker's own shard of the batch is taken.
    2. The per-step logs are averaged over workers with
       `strategy.reduce("MEAN", v, axis=0)`, which fails for the scalar
       logs ("Invalid reduction dimension 0 for input with 0
       dimensions"). Scalars are averaged with `axis=None` (the mean over
       replicas, as Keras does on one machine).
    """
    if strategy is None or num_workers(strategy) <= 1:
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if _FIXES["depth"] == 0:
        originals = (getattr(tf_trainer.TensorFlowTrainer,
                             "_maybe_symbolic_build", None),
                     getattr(tf_trainer, "reduce_per_replica", None))
        if None in originals:  # A Keras without these internals.
            yield
            return
        _FIXES["originals"] = originals
        build, reduce = _fixed(*originals)
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build
        tf_trainer.reduce_per_replica = reduce
    _FIXES["depth"] += 1
    try:
        yield
    finally:
        _FIXES["depth"] -= 1
        if _FIXES["depth"] == 0:
            build, reduce = _FIXES["originals"]
            tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build
            tf_trainer.reduce_per_replica = reduce
            _FIXES["originals"] = None


def _fixed(original_build, original_reduce):
    """The patched `_maybe_symbolic_build` and `reduce_per_replica`."""
    from keras.src import tree
    import tensorflow as tf

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not _multi_worker(strategy):
            return original_build(self, iterator, data_batch)
        for _, _, it in iterator:
            data_batch = tree.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v,
                next(it),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not _multi_worker(strategy):
            return original_reduce(values, strategy, reduction)

        def reduce(v):
            local = v
            if isinstance(v, tf.distribute.DistributedValues):
                local = strategy.experimental_local_results(v)[0]
            if isinstance(local, tf.Tensor) and local.shape.rank == 0:
                return strategy.reduce("MEAN", v, axis=None)
            return original_reduce(v, strategy, reduction)

        return tree.map_structure(reduce, values)

    return _maybe_symbolic_build, reduce_per_replica
