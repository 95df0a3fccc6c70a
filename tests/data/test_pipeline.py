"""`get_dataset`: batching, determinism, splits, metadata, errors."""

import numpy as np
import pytest
import tensorflow as tf

from keras_semkd import data as kd_data
from keras_semkd.data import paths
from tests.data.conftest import FAKE_TEST
from tests.data.conftest import FAKE_TRAIN


def _batches(ds, n=None):
    ds = ds.take(n) if n else ds
    return [(x.numpy(), tf.nest.map_structure(lambda t: t.numpy(), y))
            for x, y in ds]


def _epoch_images(ds):
    return np.concatenate([x for x, _ in _batches(ds)])


def test_registered_names():
    assert set(kd_data.DATASETS.names()) >= {
        "cifar100", "cinic10", "image_folder", "synthetic"}
    with pytest.raises(KeyError, match="cifar100"):
        kd_data.get_dataset("cifar1000", "train", 8)


def test_cifar100_train_batches_and_info(fake_cifar):
    folder, md5s = fake_cifar
    ds, info = kd_data.get_dataset("cifar100", "train", 32, data_dir=folder,
                                   md5_table=md5s)
    batches = _batches(ds)
    assert len(batches) == FAKE_TRAIN // 32 == info.num_batches
    x, y = batches[0]
    assert x.shape == (32, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (32,) and y.dtype == np.int32
    assert ds.element_spec[0].shape.as_list() == [32, 32, 32, 3]
    assert info.num_examples == FAKE_TRAIN and info.num_classes == 100
    assert info.class_names[19] == "cattle"
    assert info.coarse_class_names[0] == "aquatic_mammals"
    assert info.input_shape == (32, 32, 3)
    assert info.is_real and not info.is_generated
    assert info.augment and info.shuffle
    assert info.normalization == kd_data.get_normalization("cifar100")
    assert tf.data.experimental.cardinality(ds).numpy() == info.num_batches


def test_test_split_is_plain_normalized_and_ordered(fake_cifar):
    folder, md5s = fake_cifar
    ds, info = kd_data.get_dataset("cifar100", "test", 16, data_dir=folder,
                                   md5_table=md5s)
    assert not info.augment and not info.shuffle
    assert info.num_batches == -(-FAKE_TEST // 16)  # keeps the remainder
    images = _epoch_images(ds)
    raw = kd_data.load_cifar100(folder, "test", md5_table=md5s).images
    expected = kd_data.get_normalization("cifar100").apply_numpy(raw)
    np.testing.assert_allclose(images, expected, atol=1e-5)


def test_label_modes(fake_cifar):
    folder, md5s = fake_cifar
    raw = kd_data.load_cifar100(folder, "test", md5_table=md5s)
    ds, info = kd_data.get_dataset("cifar100", "test", 50, data_dir=folder,
                                   md5_table=md5s, label_mode="coarse")
    (_, y), = _batches(ds)
    np.testing.assert_array_equal(y, raw.labels["coarse"])
    assert info.num_classes == 20 and info.class_names[0] == "aquatic_mammals"
    ds, info = kd_data.get_dataset("cifar100", "test", 50, data_dir=folder,
                                   md5_table=md5s, label_mode="both")
    (_, y), = _batches(ds)
    np.testing.assert_array_equal(y["fine"], raw.labels["fine"])
    np.testing.assert_array_equal(y["coarse"], raw.labels["coarse"])
    assert info.num_classes == 100
    with pytest.raises(ValueError, match="label_mode"):
        kd_data.get_dataset("cifar100", "test", 8, data_dir=folder,
                            md5_table=md5s, label_mode="medium")
    with pytest.raises(ValueError, match="no 'coarse' labels"):
        kd_data.get_dataset("synthetic", "test", 8, label_mode="coarse")


def test_same_seed_same_stream_different_seed_different(fake_cifar):
    folder, md5s = fake_cifar

    def two_epochs(seed):
        ds, _ = kd_data.get_dataset("cifar100", "train", 32, data_dir=folder,
                                    md5_table=md5s, seed=seed)
        return [_batches(ds), _batches(ds)]

    a, b, c = two_epochs(0), two_epochs(0), two_epochs(1)
    for epoch in range(2):
        for (xa, ya), (xb, yb) in zip(a[epoch], b[epoch]):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0][0], c[0][0][0])
    # Epochs differ from each other (reshuffled, re-augmented).
    assert not np.array_equal(a[0][0][0], a[1][0][0])


def test_augmentation_only_moves_pixels(fake_cifar):
    """With shuffle off, each augmented image is a crop/flip of its source."""
    folder, md5s = fake_cifar
    ds, info = kd_data.get_dataset("cifar100", "train", 40, data_dir=folder,
                                   md5_table=md5s, shuffle=False, seed=3)
    x, y = _batches(ds, 1)[0]
    raw = kd_data.load_cifar100(folder, "train", md5_table=md5s)
    norm = info.normalization
    pixels = np.rint((x * np.array(norm.std) + np.array(norm.mean)) * 255)
    padded = np.pad(raw.images[:40], ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(40):
        found = any(
            np.array_equal(pixels[i], crop[:, ::-1] if f else crop)
            for oy in range(9) for ox in range(9) for f in (False, True)
            for crop in [padded[i, oy:oy + 32, ox:ox + 32]]
        )
        assert found, f"example {i} is not a crop/flip of its source"
    np.testing.assert_array_equal(y, raw.labels["fine"][:40])


def test_validation_split_disjoint_reproducible_stratified(fake_cifar):
    folder, md5s = fake_cifar
    raw = kd_data.load_cifar100(folder, "train", md5_table=md5s)
    keys = {bytes(img.tobytes()): i for i, img in enumerate(raw.images)}

    def ids(split, seed, **kw):
        ds, info = kd_data.get_dataset(
            "cifar100", split, 1000, data_dir=folder, md5_table=md5s,
            augment=False, shuffle=False, drop_remainder=False,
            validation_split=0.5, seed=seed, **kw)
        x = _epoch_images(ds)
        norm = info.normalization
        pix = np.rint((x * np.array(norm.std) + np.array(norm.mean)) * 255)
        return {keys[bytes(p.astype(np.uint8).tobytes())] for p in pix}, info

    train, tinfo = ids("train", 0)
    val, vinfo = ids("validation", 0)
    assert train.isdisjoint(val) and len(train | val) == FAKE_TRAIN
    assert tinfo.num_examples == len(train) and vinfo.num_examples == len(val)
    # Stratified: one of the two examples of each fine class.
    assert sorted(raw.labels["fine"][sorted(val)]) == list(range(100))
    assert ids("validation", 0)[0] == val
    assert ids("validation", 1)[0] != val
    assert ids("validation", 1, split_seed=0)[0] == val


def test_no_native_validation_split(fake_cifar):
    folder, md5s = fake_cifar
    with pytest.raises(ValueError, match="validation_split"):
        kd_data.get_dataset("cifar100", "validation", 8, data_dir=folder,
                            md5_table=md5s)


def test_missing_data_dir_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        kd_data.get_dataset("cifar100", "train", 8,
                            data_dir=tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value)
    assert "data_dir" in str(err.value)
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path / "nothing"))
    for name in ("cifar100", "cinic10"):
        with pytest.raises(FileNotFoundError, match=paths.DATA_ENV_VAR):
            kd_data.get_dataset(name, "train", 8)
    with pytest.raises(FileNotFoundError, match="image_folder"):
        kd_data.get_dataset("image_folder", "train", 8)


def test_cifar100_tfds_source_through_get_dataset(tmp_path, fake_cifar):
    folder, md5s = fake_cifar
    kd_data.prepare_tfds_cifar100(tmp_path / "tfds", folder, md5_table=md5s)
    a, info = kd_data.get_dataset("cifar100", "test", 50,
                                  data_dir=tmp_path / "tfds", source="tfds")
    b, _ = kd_data.get_dataset("cifar100", "test", 50, data_dir=folder,
                               md5_table=md5s)
    np.testing.assert_array_equal(_epoch_images(a), _epoch_images(b))
    assert info.source.startswith("tfds:")
    # source="auto" falls back to a prepared tfds folder.
    c, _ = kd_data.get_dataset("cifar100", "test", 50,
                               data_dir=tmp_path / "tfds")
    np.testing.assert_array_equal(_epoch_images(a), _epoch_images(c))


def test_synthetic_dataset():
    ds, info = kd_data.get_dataset("synthetic", "train", 16, num_classes=5,
                                   num_examples=80, image_size=16)
    x, y = _batches(ds, 1)[0]
    assert x.shape == (16, 16, 16, 3) and x.dtype == np.float32
    assert y.min() >= 0 and y.max() < 5
    assert info.is_generated and not info.is_real
    assert "GENERATED" in info.source
    assert info.num_classes == 5 and info.num_examples == 80
    assert info.input_shape == (16, 16, 3)
    assert info.num_batches == 5
    # Same arguments, same images; train and test differ.
    a = kd_data.load_synthetic("test", num_classes=5)
    b = kd_data.load_synthetic("test", num_classes=5)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(kd_data.load_synthetic("train").images[:10],
                              kd_data.load_synthetic("test").images[:10])


def test_synthetic_is_learnable_by_class_means():
    """Nearest class mean (a linear classifier) beats chance by far."""
    train = kd_data.load_synthetic("train", num_classes=10)
    test = kd_data.load_synthetic("test", num_classes=10)
    feats = lambda d: d.images.reshape(len(d), -1, 3).mean(1)  # noqa: E731
    means = np.stack([feats(train)[train.labels["fine"] == c].mean(0)
                      for c in range(10)])
    dist = ((feats(test)[:, None] - means[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == test.labels["fine"]).mean()
    assert accuracy > 0.6


def test_batch_larger_than_split_errors():
    with pytest.raises(ValueError, match="fewer than batch_size"):
        kd_data.get_dataset("synthetic", "train", 64, num_examples=40)


def test_with_index_yields_positions_of_the_examples():
    from keras_semkd.data import get_dataset

    ds, info = get_dataset("synthetic", "test", 16, with_index=True,
                           shuffle=True, seed=3)
    plain, _ = get_dataset("synthetic", "test", info.num_examples)
    _, all_labels = next(iter(plain))
    seen = []
    for _, y in ds:
        assert set(y) == {"label", "index"}
        idx = y["index"].numpy()
        np.testing.assert_array_equal(y["label"].numpy(),
                                      all_labels.numpy()[idx])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(info.num_examples))


def test_per_epoch_streams_are_fixed_functions_of_seed_and_epoch():
    from keras_semkd.data import get_dataset

    def batches(epoch, seed=5):
        ds, _ = get_dataset("synthetic", "test", 64, epoch=epoch, seed=seed,
                            augment=True, shuffle=True)
        return [x.numpy() for x, _ in ds]

    a = batches(2)
    tf.random.set_seed(123)  # the global seed must not matter
    b = batches(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = batches(3)
    assert not np.allclose(a[0], c[0])
    d = batches(2, seed=6)
    assert not np.allclose(a[0], d[0])
    # Skipping k batches of epoch e gives the tail of the same stream.
    ds, _ = get_dataset("synthetic", "test", 64, epoch=2, seed=5,
                        augment=True, shuffle=True)
    tail = [x.numpy() for x, _ in ds.skip(3)]
    for x, y in zip(a[3:], tail):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("split,kwargs", [
    ("train", {"augment": True}),
    ("train", {"augment": True, "epoch": 3}),
    ("test", {}),
    ("train", {"validation_split": 0.2}),
    ("validation", {"validation_split": 0.2}),
])
def test_autotuning_is_off(split, kwargs):
    # Autotuning's model thread can hold up deleting an iterator by up to
    # 60 s (pipeline.AUTOTUNE_NOTE): Keras deletes one per fit() call.
    from keras_semkd.data import pipeline

    ds, info = kd_data.get_dataset("synthetic", split, 32,
                                   num_examples=160, **kwargs)
    options = ds.options()
    assert options.autotune.enabled is False
    assert options.deterministic is True
    assert "AUTOTUNE_NOTE" in pipeline.__doc__
    assert len(list(ds)) == info.num_batches
    iterator = iter(ds)
    next(iterator)
    del iterator  # mid-stream, as at the end of a fit with steps_per_epoch
