"""TF-free input path: NumPy arrays and a `keras.utils.PyDataset`.

For the JAX (or torch) backend: the images are read without TensorFlow
(pickles / Pillow / generator), kept as uint8 in memory, and each batch is
gathered, augmented and normalized with vectorized NumPy.  Randomness is
derived from `(seed, epoch, batch index)`, so a batch does not depend on
which worker computes it or in which order batches are requested:

* epoch order: `np.random.default_rng([seed, epoch, 0]).permutation(N)`;
* batch augmentation: `np.random.default_rng([seed, epoch, 1, index])`.

Keras calls `on_epoch_end()` after each epoch (with worker threads
stopped), which advances `epoch`; set `batches.epoch = e` to jump to an
epoch.  Keras may also call it once before the first epoch (after peeking
at a batch to build the model), so training may start at epoch 1: the
stream is still a fixed function of the seed.

```python
batches, info = get_numpy_dataset("cifar100", "train", 64, seed=0)
model.fit(batches, epochs=240)
```
"""

import dataclasses
import threading

import keras
import numpy as np

from keras_semkd.data import augment_numpy
from keras_semkd.data.sources import load_split

_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


class AugmentedBatches(keras.utils.PyDataset):
    """Batches of augmented, normalized float32 NHWC images and labels.

    Args:
        images: uint8 (N, H, W, C) array.
        labels: int array (N,) or dict of such arrays.
        normalization: a `Normalization`.
        batch_size: examples per batch.
        augment: pad-crop-flip each batch.
        shuffle: new permutation every epoch.
        seed: seed of shuffling and augmentation.
        drop_remainder: drop the last partial batch.
        padding: zero padding of the crop.
        flip: random horizontal flips.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.
    """

    def __init__(self, images, labels, normalization, batch_size, *,
                 augment=False, shuffle=False, seed=0, drop_remainder=False,
                 padding=4, flip=True, **kwargs):
        super().__init__(**kwargs)
        self.images = images
        self.labels = labels
        self.normalization = normalization
        self.batch_size = int(batch_size)
        self.augment = bool(augment)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        self.padding = int(padding)
        self.flip = bool(flip)
        self.epoch = 0
        self._orders = {}
        self._lock = threading.Lock()
        n = images.shape[0]
        self._num_batches = (
            n // self.batch_size if drop_remainder
            else -(-n // self.batch_size)
        )

    def __len__(self):
        return self._num_batches

    def _order(self, epoch):
        if not self.shuffle:
            return None
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                rng = np.random.default_rng([self.seed, epoch, _ORDER_STREAM])
                order = rng.permutation(self.images.shape[0])
                self._orders = {epoch: order}  # keep the current epoch only
            return order

    def batch_indices(self, index, epoch=None):
        """Example indices of batch `index` in `epoch` (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        start = index * self.batch_size
        stop = min(start + self.batch_size, self.images.shape[0])
        order = self._order(epoch)
        if order is None:
            return np.arange(start, stop)
        return order[start:stop]

    def get_batch(self, index, epoch=None):
        """Batch `index` of `epoch` (default: the current epoch)."""
        if not 0 <= index < self._num_batches:
            raise IndexError(
                f"Batch index {index} out of range [0, {self._num_batches})."
            )
        epoch = self.epoch if epoch is None else epoch
        idx = self.batch_indices(index, epoch)
        x = self.images[idx]
        if self.augment:
            rng = np.random.default_rng(
                [self.seed, epoch, _AUGMENT_STREAM, index]
            )
            x = augment_numpy.random_crop_flip(
                x, rng, padding=self.padding, flip=self.flip
            )
        x = self.normalization.apply_numpy(x)
        if isinstance(self.labels, dict):
            y = {k: v[idx] for k, v in self.labels.items()}
        else:
            y = self.labels[idx]
        return x, y

    def __getitem__(self, index):
        return self.get_batch(index)

    def on_epoch_end(self):
        self.epoch += 1


def get_numpy_dataset(name, split, batch_size, *, data_dir=None,
                      augment=None, shuffle=None, seed=0,
                      validation_split=0.0, drop_remainder=None,
                      label_mode="fine", split_seed=None, normalization=None,
                      padding=4, flip=True, workers=1,
                      use_multiprocessing=False, max_queue_size=10,
                      max_examples=None, subset_seed=0, **kwargs):
    """TF-free counterpart of `get_dataset` (same arguments and defaults).

    Returns:
        `(batches, info)`: an `AugmentedBatches` (`keras.utils.PyDataset`)
        and a `DatasetInfo`.
    """
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
    batches = AugmentedBatches(
        images, labels, info.normalization, batch_size, augment=augment,
        shuffle=shuffle, seed=seed, drop_remainder=drop_remainder,
        padding=padding, flip=flip, workers=workers,
        use_multiprocessing=use_multiprocessing,
        max_queue_size=max_queue_size,
    )
    if len(batches) == 0:
        raise ValueError(
            f"Split {split!r} of {name!r} has {info.num_examples} examples, "
            f"fewer than batch_size={batch_size} with drop_remainder=True."
        )
    info = dataclasses.replace(
        info, batch_size=int(batch_size), num_batches=len(batches),
        augment=augment, shuffle=shuffle, seed=int(seed),
    )
    return batches, info


def get_numpy_arrays(name, split, *, label_mode="fine", normalization=None,
                     **kwargs):
    """A whole split as normalized float32 NHWC images and int32 labels.

    No augmentation; for evaluation or small datasets.  `kwargs` as in
    `load_split` (`data_dir`, `validation_split`, `seed`, loader options).

    Returns:
        `(x, y, info)`.
    """
    images, labels, info = load_split(
        name, split, label_mode=label_mode, normalization=normalization,
        **kwargs,
    )
    return info.normalization.apply_numpy(images), labels, info
