"""Evaluation subsets, class folders matched by name, held-out validation
and statistics that follow the data (issue #11)."""

import shutil

import numpy as np
import pytest

from keras_semkd import data as kd_data
from keras_semkd.data import arrays
from keras_semkd.data import normalization as norm_lib
from tests.data.conftest import write_png_folder

CLASSES = ("apple", "bear", "cloud", "dog")


@pytest.fixture
def folder(tmp_path):
    """A class-ordered image folder with train/ and test/ (no valid/),
    6 random 8x8 images per class, pixel (0, 0) = (class, index, 7)."""
    root = tmp_path / "imgs"
    write_png_folder(root, CLASSES, 6, splits=("train", "test"), size=8)
    return root


def test_stratified_subset_is_exact_proportional_and_seeded():
    labels = np.repeat(np.arange(4), [100, 100, 50, 10])  # class order
    idx = arrays.stratified_subset(labels, 26, seed=0)
    assert idx.shape == (26,) and np.all(np.diff(idx) > 0)
    # Shares proportional to 100:100:50:10 (largest remainder).
    np.testing.assert_array_equal(np.bincount(labels[idx]), [10, 10, 5, 1])
    np.testing.assert_array_equal(arrays.stratified_subset(labels, 26, 0),
                                  idx)
    assert not np.array_equal(arrays.stratified_subset(labels, 26, 1), idx)
    np.testing.assert_array_equal(arrays.stratified_subset(labels, 999),
                                  np.arange(260))
    with pytest.raises(ValueError, match="size=0"):
        arrays.stratified_subset(labels, 0)


def test_max_examples_gives_a_stratified_subset_reported_as_such(folder):
    images, labels, info = kd_data.load_split(
        "image_folder", "test", data_dir=folder, max_examples=8)
    # The first 8 images of this class-ordered split would be classes 0, 1.
    np.testing.assert_array_equal(np.bincount(labels), [2, 2, 2, 2])
    assert (info.num_examples, info.split_num_examples) == (8, 24)
    assert info.is_subset and info.subset_seed == 0
    assert "stratified subset of 8 of 24" in info.describe_split()
    record = info.split_record()
    assert record["is_subset"] and record["num_examples"] == 8
    ds, dinfo = kd_data.get_dataset("image_folder", "test", 3,
                                    data_dir=folder, max_examples=8)
    seen = np.concatenate([np.asarray(y) for _, y in ds])
    np.testing.assert_array_equal(np.sort(seen), np.sort(labels))
    whole = kd_data.load_split("image_folder", "test", data_dir=folder)[2]
    assert not whole.is_subset and whole.split_num_examples == 24
    assert "all 24 images" in whole.describe_split()


def test_a_split_missing_a_class_folder_is_an_error_naming_it(folder):
    shutil.rmtree(folder / "test" / "bear")
    with pytest.raises(ValueError, match=r"missing \['bear'\]"):
        kd_data.load_split("image_folder", "test", data_dir=folder)
    (folder / "test" / "bear").mkdir()
    write_png_folder(folder / "test", ("bear",), 2, splits=("",), size=8)
    write_png_folder(folder / "test", ("zebra",), 2, splits=("",), size=8)
    with pytest.raises(ValueError, match=r"unexpected \['zebra'\]"):
        kd_data.load_split("image_folder", "test", data_dir=folder)


def test_labels_follow_class_names_not_folder_positions(folder):
    data = kd_data.load_image_folder(folder / "test",
                                     class_names=CLASSES[::-1])
    assert data.class_names["fine"] == CLASSES[::-1]
    # The marker pixel holds the folder's sorted position c (one image per
    # split is stored grayscale, which loses it).
    kept = data.images[:, 0, 0, 2] == 7
    assert kept.sum() >= 20
    np.testing.assert_array_equal(data.labels["fine"][kept],
                                  3 - data.images[kept, 0, 0, 0])


def test_cinic10_refuses_data_that_are_not_cinic10(tmp_path):
    root = write_png_folder(tmp_path / "cifar10", kd_data.CINIC10_CLASSES, 2,
                            splits=("train", "test"), size=8)
    with pytest.raises(ValueError, match="does not hold CINIC-10") as err:
        kd_data.load_split("cinic10", "train", data_dir=root)
    assert "image_folder" in str(err.value) and "20 images" in str(err.value)
    # A deliberate subset of CINIC-10 says so.
    _, _, info = kd_data.load_split("cinic10", "train", data_dir=root,
                                    verify=False)
    assert info.normalization == kd_data.get_normalization("cinic10")
    assert info.normalization_source == "registered constants 'cinic10'"


def test_statistics_come_from_the_images_trained_on(folder):
    _, _, train = kd_data.load_split("image_folder", "train",
                                     data_dir=folder, validation_split=0.5,
                                     split_seed=1)
    _, _, val = kd_data.load_split("image_folder", "validation",
                                   data_dir=folder, validation_split=0.5,
                                   split_seed=1)
    _, _, test = kd_data.load_split("image_folder", "test", data_dir=folder,
                                    validation_split=0.5, split_seed=1)
    full = kd_data.load_image_folder(folder / "train")
    keep, _ = arrays.carve_validation(full.labels["fine"], 0.5, 1)
    expected = norm_lib.normalization_from_images(full.images[keep])
    assert train.normalization == expected
    assert val.normalization == expected and test.normalization == expected
    assert expected != norm_lib.normalization_from_images(full.images)
    assert train.normalization_source == "computed from the 12 training " \
        "images"


def test_validation_is_held_out_and_named_as_carved(folder, fake_cifar):
    with pytest.raises(FileNotFoundError, match="held out from training"):
        kd_data.load_split("image_folder", "validation", data_dir=folder)
    cifar, md5s = fake_cifar
    with pytest.raises(ValueError, match="held out from training"):
        kd_data.load_split("cifar100", "validation", data_dir=cifar,
                           md5_table=md5s)
    _, _, val = kd_data.load_split("image_folder", "validation",
                                   data_dir=folder, validation_split=0.5,
                                   split_seed=3)
    assert val.carved and val.split_seed == 3
    assert "carved from train" in val.describe_split()
    assert "held out from training" in val.describe_split()
    _, _, test = kd_data.load_split("image_folder", "test", data_dir=folder,
                                    validation_split=0.5)
    assert not test.carved and test.split_seed is None


def test_a_class_named_like_a_split_is_not_a_split(tmp_path):
    root = write_png_folder(tmp_path / "flat", ("cat", "test"), 2,
                            splits=("",), size=8)
    _, labels, info = kd_data.load_split("image_folder", "train",
                                         data_dir=root)
    assert info.class_names == ("cat", "test") and len(labels) == 4
    with pytest.raises(FileNotFoundError, match="no folder for split"):
        kd_data.load_split("image_folder", "test", data_dir=root)
