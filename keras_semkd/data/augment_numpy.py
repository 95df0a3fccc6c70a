"""Vectorized NumPy twin of `augment.py` (no TensorFlow).

Same transform as the tf.data path -- zero-pad, random crop, random
horizontal flip, then `(x / 255 - mean) / std` -- for a whole batch with
one fancy-indexing gather, driven by a `np.random.Generator`.
"""

import numpy as np


def crop_flip_params(batch_size, rng, *, padding=4, flip=True):
    """Draws `(offset_y, offset_x, flips)` for a batch from `rng`."""
    offsets = rng.integers(0, 2 * padding + 1, size=(batch_size, 2))
    if flip:
        flips = rng.random(batch_size) < 0.5
    else:
        flips = np.zeros(batch_size, bool)
    return offsets[:, 0], offsets[:, 1], flips


def apply_crop_flip(images, offset_y, offset_x, flips, *, padding=4):
    """Zero-pads by `padding`, crops at the offsets, flips where `flips`.

    `out[b] = pad(images[b])[oy:oy + H, ox:ox + W]`, mirrored left-right
    where `flips[b]`; the dtype is kept.
    """
    images = np.asarray(images)
    batch, height, width = images.shape[:3]
    padded = np.pad(
        images, ((0, 0), (padding, padding), (padding, padding), (0, 0))
    )
    rows = offset_y[:, None] + np.arange(height)[None, :]           # (B, H)
    ramp = np.arange(width)[None, :]
    cols = offset_x[:, None] + np.where(
        flips[:, None], (width - 1) - ramp, ramp
    )                                                                # (B, W)
    return padded[
        np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]
    ]


def random_crop_flip(images, rng, *, padding=4, flip=True):
    """Standard CIFAR augmentation of a uint8/float NHWC batch."""
    offset_y, offset_x, flips = crop_flip_params(
        images.shape[0], rng, padding=padding, flip=flip
    )
    return apply_crop_flip(images, offset_y, offset_x, flips,
                           padding=padding)


def normalize(images, normalization):
    """`(images / 255 - mean) / std` as float32 (see `Normalization`)."""
    return normalization.apply_numpy(images)
