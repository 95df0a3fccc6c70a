"""keras_semkd.resolve: the one place scripts turn names, overrides and
flag values into a runnable recipe (and fall back to generated data)."""

import pytest

from keras_semkd import resolve


def test_parse_overrides_reads_json_values_and_keeps_text():
    changes = resolve.parse_overrides([
        "optimizer.learning_rate=0.1", "terms.kd.temperature = 2",
        "data.dataset=cinic10", "data.image_size=[32, 32]"])
    assert changes == {"optimizer.learning_rate": 0.1,
                       "terms.kd.temperature": 2,
                       "data.dataset": "cinic10",
                       "data.image_size": [32, 32]}
    with pytest.raises(ValueError, match="key=value.*'lr'"):
        resolve.parse_overrides(["lr"])


def test_parse_image_size():
    assert resolve.parse_image_size(["64"]) == [64, 64]
    assert resolve.parse_image_size(["64", "48"]) == [64, 48]
    for bad in (["0"], ["a"], ["1", "2", "3"]):
        with pytest.raises(ValueError, match="H,W or N"):
            resolve.parse_image_size(bad)


def test_method_needs_teacher_and_student():
    with pytest.raises(ValueError, match="needs a teacher and a student"):
        resolve.resolve_recipe(method="kd", teacher="resnet20")


def test_changes_apply_and_none_values_are_skipped(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_SEMKD_DATA", str(tmp_path))
    recipe = resolve.resolve_recipe(
        "cpu_smoke", changes={"seed": 7, "epochs": None,
                              "data.dataset": "synthetic"})
    assert recipe.seed == 7
    assert recipe.epochs == resolve.configs.get("cpu_smoke").epochs
    assert recipe.data.dataset == "synthetic"


def test_missing_cifar100_falls_back_to_generated_data(monkeypatch,
                                                       tmp_path):
    from keras_semkd import data as data_lib

    monkeypatch.setenv("KERAS_SEMKD_DATA", str(tmp_path / "none"))
    base = resolve.configs.get("cpu_smoke")
    assert base.data.limit_train is not None  # reset by the fallback
    recipe = resolve.resolve_recipe("cpu_smoke")
    info = data_lib.load_split("synthetic", "train")[2]
    assert recipe.data.dataset == "synthetic"
    assert recipe.num_classes == info.num_classes != base.num_classes
    assert recipe.data.limit_train is None
    # A limit the user gave explicitly survives the fallback.
    recipe = resolve.resolve_recipe(
        "cpu_smoke", changes={"data.limit_train": 64})
    assert recipe.data.dataset == "synthetic"
    assert recipe.data.limit_train == 64


def test_cifar100_given_by_data_dir_is_not_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_SEMKD_DATA", str(tmp_path / "none"))
    recipe = resolve.resolve_recipe(
        "cpu_smoke", changes={"data.data_dir": str(tmp_path)})
    assert recipe.data.dataset == "cifar100"
    assert recipe.num_classes == 100


def test_unknown_recipe_lists_known_names():
    with pytest.raises(KeyError, match="cpu_smoke"):
        resolve.resolve_recipe("no-such-recipe")
