"""In-graph, batched, seeded CIFAR augmentation and normalization (TF).

The standard CIFAR augmentation -- zero-pad 4 pixels, take a random 32x32
crop, flip horizontally with probability 1/2 -- is done for a whole batch
with two batched gathers (rows, then columns; the flip is folded into the
column indices), on uint8 pixels, before the cast.  Randomness is
*stateless*: every batch gets a `[2]` seed, so the same seed gives the same
crops and flips.  Normalization is one fused multiply-add per pixel.

The NumPy twin of these functions is `augment_numpy.py`.
"""

import tensorflow as tf

from keras_semkd.data.normalization import Normalization
from keras_semkd.data.normalization import get_normalization


def crop_flip_params(batch_size, seed, *, padding=4, flip=True):
    """Draws per-example crop offsets and flip flags statelessly.

    Args:
        batch_size: number of examples (scalar int tensor or int).
        seed: `[2]` int tensor, the stateless seed of this batch.
        padding: pad width; offsets are drawn in `[0, 2 * padding]`.
        flip: whether to draw flips (else all `False`).

    Returns:
        `(offset_y, offset_x, flips)`: int32 `(B,)`, int32 `(B,)`, bool `(B,)`.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    offsets = tf.random.stateless_uniform(
        [batch_size, 2], seeds[0], minval=0, maxval=2 * padding + 1,
        dtype=tf.int32,
    )
    if flip:
        flips = tf.random.stateless_uniform([batch_size], seeds[1]) < 0.5
    else:
        flips = tf.zeros([batch_size], tf.bool)
    return offsets[:, 0], offsets[:, 1], flips


def apply_crop_flip(images, offset_y, offset_x, flips, *, padding=4):
    """Zero-pads by `padding`, crops at the offsets and flips, batched.

    `out[b] = pad(images[b])[oy:oy + H, ox:ox + W]`, mirrored left-right
    where `flips[b]`.  Works for any dtype; output shape equals the input.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    padded = tf.pad(
        images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    )
    rows = offset_y[:, None] + tf.range(height)[None, :]          # (B, H)
    cols = tf.where(
        flips[:, None],
        offset_x[:, None] + (width - 1) - tf.range(width)[None, :],
        offset_x[:, None] + tf.range(width)[None, :],
    )                                                              # (B, W)
    out = tf.gather(padded, rows, axis=1, batch_dims=1)           # (B,H,W+2p,C)
    out = tf.gather(out, cols, axis=2, batch_dims=1)              # (B,H,W,C)
    return tf.ensure_shape(out, images.shape)


def random_crop_flip(images, seed, *, padding=4, flip=True):
    """Standard CIFAR augmentation of a batch with a stateless `[2]` seed.

    Args:
        images: `(B, H, W, C)` tensor (uint8 or float).
        seed: `[2]` int32/int64 tensor; equal seeds give equal outputs.
        padding: zero padding before the crop (4 for CIFAR).
        flip: random horizontal flips.
    """
    offset_y, offset_x, flips = crop_flip_params(
        tf.shape(images)[0], seed, padding=padding, flip=flip
    )
    return apply_crop_flip(images, offset_y, offset_x, flips,
                           padding=padding)


def normalize(images, normalization):
    """`(images / 255 - mean) / std` as float32, from raw 0..255 pixels.

    Args:
        images: `(..., C)` tensor of raw pixels (uint8 or float).
        normalization: a `Normalization` or a registered dataset name.
    """
    if not isinstance(normalization, Normalization):
        normalization = get_normalization(normalization)
    scale = tf.constant(normalization.scale, tf.float32)
    offset = tf.constant(normalization.offset, tf.float32)
    return tf.cast(images, tf.float32) * scale + offset
