"""Pad/crop/flip and normalization, in-graph (TF) and NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from keras_semkd.data import augment
from keras_semkd.data import augment_numpy
from keras_semkd.data import normalization as norm_lib


def _hand_image(size=8, channels=2):
    """Distinct values: channel 0 = 1 + row, channel 1 = 1 + col (no 0s)."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([rows + 1, cols + 1][:channels], -1).astype(np.uint8)


def _reference(image, oy, ox, flip, padding):
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    out = padded[oy:oy + h, ox:ox + w]
    return out[:, ::-1] if flip else out


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_crop_flip_matches_reference_slicing(impl):
    padding = 2
    image = _hand_image(size=6)
    cases = [(oy, ox, f) for oy in (0, 2, 4) for ox in (0, 1, 4)
             for f in (False, True)]
    batch = np.stack([image] * len(cases))
    oy = np.array([c[0] for c in cases], np.int32)
    ox = np.array([c[1] for c in cases], np.int32)
    flips = np.array([c[2] for c in cases])
    if impl == "tf":
        out = augment.apply_crop_flip(batch, tf.constant(oy), tf.constant(ox),
                                      tf.constant(flips),
                                      padding=padding).numpy()
    else:
        out = augment_numpy.apply_crop_flip(batch, oy, ox, flips,
                                            padding=padding)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    for i, (y, x, f) in enumerate(cases):
        np.testing.assert_array_equal(out[i], _reference(image, y, x, f,
                                                         padding))


@pytest.mark.parametrize("impl", ["tf", "numpy"])
def test_corner_offsets_show_zero_padding(impl):
    image = np.full((1, 32, 32, 3), 200, np.uint8)
    args = [np.array([0], np.int32), np.array([0], np.int32),
            np.array([False])]
    if impl == "tf":
        out = augment.apply_crop_flip(image, *map(tf.constant, args)).numpy()
    else:
        out = augment_numpy.apply_crop_flip(image, *args)
    # Offset (0, 0) of a 4-pixel pad: 4 zero rows on top, 4 zero columns left.
    assert (out[0, :4] == 0).all() and (out[0, :, :4] == 0).all()
    assert (out[0, 4:, 4:] == 200).all()


def test_flip_symmetry_at_center_offset():
    image = _hand_image(size=32, channels=2)[None]
    centre = tf.constant([4], tf.int32)
    plain = augment.apply_crop_flip(image, centre, centre,
                                    tf.constant([False])).numpy()
    flipped = augment.apply_crop_flip(image, centre, centre,
                                      tf.constant([True])).numpy()
    np.testing.assert_array_equal(plain[0], image[0])
    np.testing.assert_array_equal(flipped[0], image[0, :, ::-1])


def test_random_crop_flip_seeded_and_in_range():
    images = np.stack([_hand_image(32, 2)] * 64)
    seed = tf.constant([3, 4], tf.int64)
    a = augment.random_crop_flip(images, seed).numpy()
    b = augment.random_crop_flip(images, seed).numpy()
    c = augment.random_crop_flip(images, tf.constant([3, 5], tf.int64))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c.numpy())
    oy, ox, flips = augment.crop_flip_params(1000, seed)
    assert 0 <= oy.numpy().min() and oy.numpy().max() <= 8
    assert 0 <= ox.numpy().min() and ox.numpy().max() <= 8
    assert len(np.unique(oy.numpy())) == 9  # every offset occurs
    assert 0.4 < flips.numpy().mean() < 0.6


def test_numpy_random_crop_flip_seeded():
    images = np.stack([_hand_image(32, 2)] * 16)
    a = augment_numpy.random_crop_flip(images, np.random.default_rng(1))
    b = augment_numpy.random_crop_flip(images, np.random.default_rng(1))
    c = augment_numpy.random_crop_flip(images, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == images.shape and a.dtype == np.uint8


def test_normalization_constants():
    cifar = norm_lib.get_normalization("cifar100")
    assert cifar.mean == (0.5071, 0.4865, 0.4409)
    assert cifar.std == (0.2673, 0.2564, 0.2762)
    cinic = norm_lib.get_normalization("CINIC10")  # case-insensitive
    assert cinic.mean == (0.47889522, 0.47227842, 0.43047404)
    assert cinic.std == (0.24205776, 0.23828046, 0.25874835)
    assert set(norm_lib.NORMALIZATIONS.names()) >= {"cifar100", "cinic10"}
    with pytest.raises(KeyError, match="cifar100"):
        norm_lib.get_normalization("imagenet")


def test_normalize_tf_and_numpy_agree_with_formula():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    cifar = norm_lib.get_normalization("cifar100")
    expected = (raw / 255.0 - np.array(cifar.mean)) / np.array(cifar.std)
    out_tf = augment.normalize(raw, "cifar100").numpy()
    out_np = cifar.apply_numpy(raw)
    assert out_tf.dtype == np.float32 and out_np.dtype == np.float32
    np.testing.assert_allclose(out_tf, expected, atol=1e-5)
    np.testing.assert_allclose(out_np, expected, atol=1e-5)


def test_normalization_validation_and_stats():
    with pytest.raises(ValueError, match="std"):
        norm_lib.Normalization(mean=(0.5,), std=(0.0,))
    images = np.zeros((4, 2, 2, 3), np.uint8)
    images[:2] = 255
    stats = norm_lib.normalization_from_images(images)
    np.testing.assert_allclose(stats.mean, (0.5, 0.5, 0.5))
    np.testing.assert_allclose(stats.std, (0.5, 0.5, 0.5))
