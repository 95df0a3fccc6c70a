"""`get_dataset`: the one public tf.data builder.

The decoded uint8 images of the split are held in memory as one tensor;
the pipeline shuffles *indices*, batches them, then gathers, augments and
normalizes whole batches in a parallel, order-preserving `map`:

```
range(N) -> shuffle(N, seed) -> batch(B) -> zip(random(seed').batch(2))
         -> map(gather + pad/crop/flip + normalize, 2 in parallel,
                deterministic=True) -> prefetch(2)
```

Every batch gets a stateless `[2]` seed from `tf.data.Dataset.random`
(re-randomized each epoch) and the shuffle is seeded, so a fixed `seed`
reproduces the exact stream of batches, epoch after epoch, for a freshly
built dataset.  (As with any seeded TF op, `tf.random.set_seed` /
`keras.utils.set_random_seed` also enters the stream.)  tf.data autotuning
is off: see `AUTOTUNE_NOTE`.
"""

import dataclasses

import tensorflow as tf

from keras_semkd.data import augment as augment_lib
from keras_semkd.data.sources import load_split


#: Batches gathered and augmented in parallel, and batches prefetched. The
#: pipeline delivers ~32,000 augmented images/s on 2 cores with these fixed
#: sizes (BENCHMARKS.md; ~35,000 autotuned), ~70x what a CPU training step
#: consumes.
PARALLEL_BATCHES = 2
PREFETCH_BATCHES = 2

#: Why `get_dataset` turns tf.data autotuning off.
AUTOTUNE_NOTE = """\
With autotuning on, every iterator runs a model thread that optimizes after
10 ms, 20 ms, 40 ms, ... (doubling) and, once the period reaches its 60 s
cap, every 60 s: at about 82, 142, 202 s after the iterator starts. Deleting
the iterator (Keras does at the end of every `fit` call, and the Runner calls
`fit` once per epoch) sometimes blocks until that thread's next wake-up
(measured with TF 2.21; which code path misses the wake-up we did not pin
down). In the SAKD protocol runs, 7-35 % of epochs per commit ended at
exactly those marks (`epoch_s` of 82.1, 142.1, 202.1 s), 10-60 s after
Keras' own epoch time. With autotuning off the iterator has no such thread,
and the runs since show no such stall. `benchmarks/epoch_stalls.py` counts
them in protocol result lines; docs/method.md §7 (4) has the numbers."""


def _derived_seed(seed, stream):
    return (int(seed) * 1_000_003 + 7919 * (stream + 1)) % (2**31 - 1)


def get_dataset(name, split, batch_size, *, data_dir=None, augment=None,
                shuffle=None, seed=0, validation_split=0.0,
                drop_remainder=None, label_mode="fine", split_seed=None,
                normalization=None, padding=4, flip=True,
                shuffle_buffer=None, with_index=False, epoch=None,
                max_examples=None, subset_seed=0, **kwargs):
    """Builds the batched, prefetched `tf.data.Dataset` of a named dataset.

    Args:
        name: `"cifar100"`, `"cinic10"`, `"image_folder"`, `"synthetic"`
            or any name registered in `DATASETS`.
        split: `"train"`, `"validation"` or `"test"`.
        batch_size: examples per batch.
        data_dir: where the data are; `None` uses the default data root
            (see `keras_semkd.data.paths`).  A missing folder raises
            `FileNotFoundError` saying how to provide the data.
        augment: pad-4 random crop + horizontal flip; default: train only.
        shuffle: reshuffle every epoch; default: train only.
        seed: seed of shuffling and augmentation (and of the carve-out,
            unless `split_seed` is given).
        validation_split: fraction of train carved out (stratified,
            reproducible) as the `"validation"` split; `"train"` is then the
            rest.
        drop_remainder: drop the last partial batch; default: train only.
        label_mode: `"fine"`, `"coarse"` or `"both"` (CIFAR-100); with
            `"both"` the label is `{"fine": ..., "coarse": ...}`.
        split_seed: seed of the carve-out; defaults to `seed`.
        normalization: `None` for the dataset's constants (statistics of
            the training images when it has none), a registered name, a
            `Normalization` or a `(mean, std)` pair.
        max_examples: deliver a stratified random subset of this many
            examples of the split (`info.split_num_examples` keeps the
            split's size), e.g. a quick evaluation on part of a test set
            stored in class order; `None`: all of it.
        subset_seed: seed of that subset (fixed: the same images for every
            run).
        padding: zero padding of the random crop (4).
        flip: random horizontal flips when augmenting.
        shuffle_buffer: shuffle buffer (indices); default: the whole split.
        epoch: build the stream of this one epoch only: its shuffle order
            and augmentation are a fixed function of `(seed, epoch)`,
            independent of how many epochs were iterated before (and of the
            global TF seed), so a run resumed at epoch `e` — even mid-epoch,
            with `.skip(steps_done)` — sees exactly the batches an
            uninterrupted run sees. `None` (default) gives one dataset
            reshuffled on every iteration.
        with_index: deliver labels as `{"label": y, "index": i}` with `i`
            the example's position in the split (for losses with a memory
            bank over the training set, e.g. CRD).
        **kwargs: passed to the dataset loader, e.g. `source="tfds"`,
            `md5_table=...`, `num_classes=...` (synthetic),
            `image_size=...` (image_folder).

    Returns:
        `(dataset, info)`: a `tf.data.Dataset` of `(images, labels)` with
        float32 NHWC normalized images and int32 labels, and a frozen
        `DatasetInfo` (num_classes, class_names, num_examples, input_shape,
        is_generated, ...).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1. Received: {batch_size}")
    batch_size = int(batch_size)
    images, labels, info = load_split(
        name, split, data_dir=data_dir, validation_split=validation_split,
        seed=seed, split_seed=split_seed, label_mode=label_mode,
        normalization=normalization, max_examples=max_examples,
        subset_seed=subset_seed, **kwargs,
    )
    is_train = split == "train"
    augment = is_train if augment is None else bool(augment)
    shuffle = is_train if shuffle is None else bool(shuffle)
    drop_remainder = is_train if drop_remainder is None else drop_remainder
    n = images.shape[0]
    num_batches = n // batch_size if drop_remainder else -(-n // batch_size)
    if num_batches == 0:
        raise ValueError(
            f"Split {split!r} of {name!r} has {n} examples, fewer than "
            f"batch_size={batch_size} with drop_remainder=True."
        )

    images_t = tf.constant(images)
    labels_t = tf.nest.map_structure(tf.constant, labels)
    norm = info.normalization

    base_seed = int(seed)
    per_epoch = epoch is not None
    if per_epoch:
        # One stream per (seed, epoch): seeds mixed with the epoch, no
        # reshuffling state carried between iterations.
        seed = _derived_seed(seed, 1000 + int(epoch))
    if per_epoch and shuffle:
        # A stateless permutation: independent of the global TF seed.
        order = tf.argsort(tf.random.stateless_uniform(
            [n], seed=[_derived_seed(seed, 0), 0]))
        ds = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64))
    else:
        ds = tf.data.Dataset.range(n)
    if shuffle and not per_epoch:
        ds = ds.shuffle(shuffle_buffer or n, seed=_derived_seed(seed, 0),
                        reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def gather(indices):
        x = tf.gather(images_t, indices)
        y = tf.nest.map_structure(lambda t: tf.gather(t, indices), labels_t)
        if with_index:
            y = {"label": y, "index": tf.cast(indices, tf.int32)}
        return x, y

    if augment:
        if per_epoch:
            # Stateless batch seeds: (batch index, seed) -> [2] seed, with no
            # dependence on the global TF seed.
            seeds = tf.data.Dataset.range(num_batches).map(
                lambda i: tf.stack([tf.cast(i, tf.int64),
                                    tf.constant(_derived_seed(seed, 1),
                                                tf.int64)])
            )
        else:
            seeds = tf.data.Dataset.random(
                seed=_derived_seed(seed, 1), rerandomize_each_iteration=True
            ).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds)

        def transform(indices, batch_seed):
            x, y = gather(indices)
            x = augment_lib.random_crop_flip(x, batch_seed, padding=padding,
                                             flip=flip)
            return augment_lib.normalize(x, norm), y
    else:

        def transform(indices):
            x, y = gather(indices)
            return augment_lib.normalize(x, norm), y

    ds = ds.map(transform, num_parallel_calls=PARALLEL_BATCHES,
                deterministic=True)
    ds = ds.prefetch(PREFETCH_BATCHES)
    options = tf.data.Options()
    options.deterministic = True
    # No autotuning: deleting an autotuned iterator can block until the
    # autotune thread's next wake-up (up to 60 s; see AUTOTUNE_NOTE).
    options.autotune.enabled = False
    ds = ds.with_options(options)

    info = dataclasses.replace(
        info, batch_size=batch_size, num_batches=num_batches,
        augment=augment, shuffle=shuffle, seed=base_seed,
    )
    return ds, info
