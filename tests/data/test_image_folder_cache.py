"""Image folders of any size (resize on load, the recipe field and flag)
and the decoded-image cache."""

import os

import numpy as np
import pytest

from keras_semkd import configs
from keras_semkd import data as kd_data
from keras_semkd.data import image_folder
from tests.data.conftest import write_png_folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(image_folder.CACHE_ENV_VAR, str(folder))
    return folder / "image_folder"


@pytest.fixture
def folder(tmp_path):
    return write_png_folder(tmp_path / "imgs", ("a", "b", "c"), 4, size=20,
                            splits=("train", "test"))


def _count_decodes(monkeypatch):
    calls = []
    original = image_folder.decode_image

    def counting(path, image_size=None):
        calls.append(path)
        return original(path, image_size)

    monkeypatch.setattr(image_folder, "decode_image", counting)
    return calls


def test_second_load_reads_the_cache_not_the_files(folder, cache,
                                                   monkeypatch):
    calls = _count_decodes(monkeypatch)
    first = kd_data.load_image_folder(folder / "train")
    assert len(calls) == 12
    assert len(list(cache.glob("*.npy"))) == 1
    second = kd_data.load_image_folder(folder / "train")
    assert len(calls) == 12  # nothing decoded again
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels["fine"],
                                  second.labels["fine"])
    assert second.class_names == first.class_names


def test_cache_follows_the_files_and_the_size(folder, cache, monkeypatch):
    calls = _count_decodes(monkeypatch)
    kd_data.load_image_folder(folder / "train")
    # Another resize size: another entry.
    small = kd_data.load_image_folder(folder / "train", image_size=(8, 8))
    assert small.images.shape == (12, 8, 8, 3) and len(calls) == 24
    # A touched image: decoded again.
    touched = next((folder / "train" / "a").iterdir())
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    kd_data.load_image_folder(folder / "train")
    assert len(calls) == 36
    # A new image: decoded again, and counted.
    from PIL import Image

    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(
        folder / "train" / "a" / "new.png")
    assert len(kd_data.load_image_folder(folder / "train")) == 13
    assert len(calls) == 49
    assert len(list(cache.glob("*.npy"))) == 4


def test_cache_off_and_unwritable(folder, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    monkeypatch.setenv(image_folder.CACHE_ENV_VAR, "off")
    assert image_folder.cache_dir() is None
    kd_data.load_image_folder(folder / "train")
    kd_data.load_image_folder(folder / "train")
    assert len(calls) == 24
    kd_data.load_image_folder(folder / "train", cache=False)
    # A cache location that cannot be created costs only the speed-up.
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv(image_folder.CACHE_ENV_VAR, str(blocker))
    assert len(kd_data.load_image_folder(folder / "train")) == 12


def test_images_of_any_size_resized_on_load(tmp_path, cache):
    root = write_png_folder(tmp_path / "mixed", ("x", "y"), 3, size=40,
                            splits=("train", "test"))
    write_png_folder(root, ("y",), 2, seed=3, size=24, splits=("train",))
    with pytest.raises(ValueError, match="image_size"):
        kd_data.get_dataset("image_folder", "train", 4, data_dir=root)
    ds, info = kd_data.get_dataset("image_folder", "train", 4, data_dir=root,
                                   image_size=(32, 32))
    assert info.input_shape == (32, 32, 3)
    assert info.class_names == ("x", "y")
    x, _ = next(iter(ds))
    assert tuple(x.shape) == (4, 32, 32, 3)
    _, test_info = kd_data.get_dataset("image_folder", "test", 4,
                                       data_dir=root, image_size=48)
    assert test_info.input_shape == (48, 48, 3)
    # The test split is normalized with the train split's statistics.
    assert test_info.normalization == kd_data.get_dataset(
        "image_folder", "train", 4, data_dir=root,
        image_size=48)[1].normalization
    with pytest.raises(ValueError, match=r"image_size.*Received: "
                                         r"image_size=\(0, 32\)"):
        kd_data.load_image_folder(root / "train", image_size=(0, 32))


def test_recipe_field_and_its_checks():
    base = configs.get("cpu_smoke")
    assert "image_size" not in base.to_json()  # old run configs unchanged
    r = base.override(**{"data.dataset": "image_folder",
                         "data.image_size": [64, 48]})
    assert r.data.image_size == (64, 48)
    assert r.data.loader_kwargs() == {"image_size": (64, 48)}
    assert configs.Recipe.from_json(r.to_json()) == r
    s = base.override(**{"data.dataset": "synthetic",
                         "data.image_size": 16})
    assert s.data.loader_kwargs() == {"image_size": 16}
    with pytest.raises(ValueError, match="cifar100.*32x32"):
        base.override(**{"data.image_size": [64, 64]})
    with pytest.raises(ValueError, match="square"):
        base.override(**{"data.dataset": "synthetic",
                         "data.image_size": [16, 8]})
    with pytest.raises(ValueError, match=r"Received: image_size=\[64\]"):
        base.override(**{"data.dataset": "image_folder",
                         "data.image_size": [64]})


def test_the_run_record_carries_the_size_to_evaluate_and_export(tmp_path,
                                                                cache):
    from keras_semkd import training

    root = write_png_folder(tmp_path / "mixed", ("x", "y"), 3, size=40,
                            splits=("train", "test"))
    write_png_folder(root, ("y",), 2, seed=3, size=24, splits=("train",))
    recipe = configs.get("cpu_smoke").override(**{
        "data.dataset": "image_folder", "data.data_dir": str(root),
        "data.image_size": [32, 32], "data.limit_train": None,
        "num_classes": 2})
    _, _, train_info = kd_data.load_split(
        "image_folder", "train", data_dir=root,
        **recipe.data.loader_kwargs())
    _, _, eval_info = kd_data.load_split(
        "image_folder", "test", data_dir=root,
        normalization=train_info.normalization,
        **recipe.data.loader_kwargs())
    record = training.data_record(recipe, train_info, eval_info, root)
    assert record["loader"] == {"image_size": [32, 32]}
    args = training.held_out_split_args(record, "test")
    assert args["image_size"] == (32, 32)
    ds, info = kd_data.get_dataset("image_folder", "test", 4, data_dir=root,
                                   **args)
    assert info.input_shape == tuple(record["input_shape"]) == (32, 32, 3)
    # Another dataset is read at its own size.
    assert "image_size" not in training.held_out_split_args(
        record, "test", dataset="synthetic")
