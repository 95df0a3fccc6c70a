"""In-memory labelled images and the validation carve-out (NumPy only).

Every source (local CIFAR pickles, tfds, image folders, generated data)
produces a `LabeledImages`: decoded uint8 NHWC images plus one or more
integer label arrays.  Keeping the decoded uint8 arrays in memory is what
makes the input pipelines fast (CIFAR-100 train is 150 MB), and it lets the
tf.data path and the TF-free NumPy path share everything but the last step.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LabeledImages:
    """Decoded images with their labels.

    Attributes:
        images: uint8 array of shape (N, H, W, C).
        labels: dict mapping a label kind to an int32 array of shape (N,).
            CIFAR-100 has `"fine"` and `"coarse"`; single-label datasets
            have `"fine"` only.
        class_names: dict mapping each label kind to its class names.
        source: human-readable description of where the data came from.
        is_generated: `True` for generated (synthetic) data.
    """

    images: np.ndarray
    labels: dict
    class_names: dict
    source: str
    is_generated: bool = False

    def __post_init__(self):
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                "images must be a uint8 (N, H, W, C) array. Received: "
                f"dtype={self.images.dtype}, shape={self.images.shape}"
            )
        for kind, labels in self.labels.items():
            if labels.shape != (n,):
                raise ValueError(
                    f"labels[{kind!r}] must have shape ({n},). "
                    f"Received: shape={labels.shape}"
                )
            if kind not in self.class_names:
                raise ValueError(f"No class names for label kind {kind!r}.")

    def __len__(self):
        return int(self.images.shape[0])

    def take(self, indices):
        """A new `LabeledImages` with the examples at `indices` (copied)."""
        indices = np.asarray(indices)
        return dataclasses.replace(
            self,
            images=self.images[indices],
            labels={k: v[indices] for k, v in self.labels.items()},
        )


def carve_validation(labels, fraction, seed):
    """Splits example indices into disjoint (train, validation) parts.

    The split is stratified: each class gives `round(fraction * count)`
    examples (at least one when it has two or more and `fraction > 0`) to
    validation, chosen by a NumPy generator seeded with `seed`.  The same
    `(labels, fraction, seed)` always gives the same split.

    Args:
        labels: int array (N,) used for stratification.
        fraction: validation fraction, in (0, 1).
        seed: integer seed.

    Returns:
        `(train_indices, validation_indices)`, both sorted int64 arrays.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"validation_split must be in (0, 1). Received: {fraction}"
        )
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0x5EED, 0xCA7])
    val = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = int(round(fraction * members.size))
        if count == 0 and members.size >= 2:
            count = 1
        count = min(count, members.size - 1) if members.size > 1 else 0
        if count:
            val.append(rng.choice(members, size=count, replace=False))
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    mask = np.ones(labels.shape[0], bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def stratified_subset(labels, size, seed=0):
    """Indices of a stratified random subset of exactly `size` examples.

    Each class gets a share proportional to its count (largest remainder
    rounding, so the shares sum to `size`), drawn without replacement by a
    NumPy generator seeded with `seed`.  Used for evaluation subsets
    (`limit_eval`): the first `size` examples of a split stored in class
    order would be one or two classes only.

    Args:
        labels: int array (N,).
        size: number of examples to keep (>= 1); `size >= N` keeps all.
        seed: integer seed; the same `(labels, size, seed)` always gives
            the same subset.

    Returns:
        Sorted int64 indices.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1. Received: size={size}")
    if size >= n:
        return np.arange(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (size / n)
    shares = np.floor(exact).astype(np.int64)
    # Largest remainders first; ties broken by class order.
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[:size - int(shares.sum())]] += 1
    rng = np.random.default_rng([int(seed), 0x5B5E7, 0xE7A1])
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=int(k), replace=False)
        for cls, k in zip(classes, shares) if k
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
