"""CINIC-10 tfds builder and the generic image-folder loader."""

import numpy as np
import pytest

from keras_semkd import data as kd_data
from keras_semkd.data import image_folder
from tests.data.conftest import write_png_folder

PER_CLASS = 3


@pytest.fixture
def cinic_root(tmp_path):
    return write_png_folder(tmp_path / "CINIC-10", kd_data.CINIC10_CLASSES,
                            PER_CLASS)


def test_image_folder_loader(cinic_root):
    data = kd_data.load_image_folder(cinic_root / "train")
    assert data.images.shape == (30, 32, 32, 3)
    assert data.images.dtype == np.uint8
    assert data.class_names["fine"] == kd_data.CINIC10_CLASSES
    np.testing.assert_array_equal(np.bincount(data.labels["fine"]),
                                  [PER_CLASS] * 10)
    # The marker pixel (class, index, 7) survived decoding (RGB images).
    for img, label in zip(data.images, data.labels["fine"]):
        if label != 1:
            assert img[0, 0, 0] == label and img[0, 0, 2] == 7
    # The grayscale PNG was converted to 3 equal channels.
    gray = data.images[data.labels["fine"] == 1][0]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])


def test_image_folder_splits_and_resize(cinic_root):
    val = kd_data.load_image_folder_split(cinic_root, "validation")
    assert len(val) == 30 and "valid" in val.source
    small = kd_data.load_image_folder_split(cinic_root, "test",
                                            image_size=(16, 16))
    assert small.images.shape == (30, 16, 16, 3)


def test_image_folder_errors(tmp_path, cinic_root):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kd_data.load_image_folder(tmp_path / "missing")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        kd_data.load_image_folder(tmp_path / "empty_root")
    (cinic_root / "train" / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra holds no images"):
        kd_data.load_image_folder(cinic_root / "train")
    (cinic_root / "train" / "zebra").rmdir()
    bad = cinic_root / "train" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png"):
        kd_data.load_image_folder(cinic_root / "train")
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="no folder for split"):
        kd_data.load_image_folder_split(tmp_path / "empty_root", "test")


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    root = write_png_folder(tmp_path / "a", ("x", "y"), 2, splits=("",))
    write_png_folder(tmp_path / "a", ("z",), 1, size=20, splits=("",))
    with pytest.raises(ValueError, match="image_size"):
        kd_data.load_image_folder(root)
    assert kd_data.load_image_folder(root, image_size=(8, 8)).images.shape == (
        5, 8, 8, 3)


def test_cinic10_folder_source_checks_classes(tmp_path):
    root = write_png_folder(tmp_path / "c", ("cat", "dog"), 1)
    with pytest.raises(ValueError, match="expected"):
        kd_data.load_cinic10(root, "train")


def test_cinic10_get_dataset_from_folders(cinic_root):
    ds, info = kd_data.get_dataset("cinic10", "validation", 8,
                                   data_dir=cinic_root.parent, verify=False)
    assert info.num_examples == 30 and info.num_classes == 10
    assert info.class_names == kd_data.CINIC10_CLASSES
    assert info.normalization == kd_data.get_normalization("cinic10")
    x, y = next(iter(ds))
    assert x.shape == (8, 32, 32, 3) and x.dtype.name == "float32"
    ds, info = kd_data.get_dataset("image_folder", "train", 8,
                                   data_dir=cinic_root, seed=1)
    assert info.num_batches == 3 and info.augment
    # Generic folders get statistics computed from their train split.
    assert 0.3 < info.normalization.mean[0] < 0.7


def test_cinic10_tfds_builder(tmp_path, cinic_root):
    import tensorflow_datasets as tfds

    tfds_dir = tmp_path / "tfds"
    path = kd_data.prepare_tfds_cinic10(cinic_root, tfds_dir)
    assert path.name == "1.0.0" and path.parent.name == "cinic10"
    builder = kd_data.Cinic10(data_dir=str(tfds_dir))
    assert builder.info.splits["train"].num_examples == 30
    assert builder.info.splits["validation"].num_examples == 30
    assert builder.info.splits["test"].num_examples == 30
    assert builder.info.features["label"].names == list(
        kd_data.CINIC10_CLASSES)
    ds = tfds.load("cinic10", split="test", data_dir=str(tfds_dir),
                   download=False, as_supervised=True)
    image, label = next(iter(ds))
    assert image.shape == (32, 32, 3) and 0 <= int(label) < 10
    for split in ("train", "validation", "test"):
        a = kd_data.load_cinic10(tfds_dir, split, verify=False)  # tfds
        b = kd_data.load_cinic10(cinic_root, split, verify=False)  # folder
        assert a.source.startswith("tfds:")
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels["fine"], b.labels["fine"])
    ds, info = kd_data.get_dataset("cinic10", "train", 10, data_dir=tfds_dir,
                                   validation_split=0.34, seed=0,
                                   verify=False)
    assert info.num_examples == 20  # one of 3 per class carved out


def test_cinic10_builder_missing_split_folder(tmp_path, cinic_root):
    import shutil

    shutil.rmtree(cinic_root / "valid")
    with pytest.raises(FileNotFoundError, match="valid"):
        kd_data.prepare_tfds_cinic10(cinic_root, tmp_path / "tfds")


def test_scan_ignores_hidden_and_non_images(cinic_root):
    (cinic_root / "train" / "cat" / ".DS_Store").write_bytes(b"x")
    (cinic_root / "train" / "cat" / "notes.txt").write_text("x")
    files, labels, names = image_folder.scan_image_folder(cinic_root / "train")
    assert len(files) == 30 and len(names) == 10
