"""Recipe -> Distiller building: class counts of teacher weights and
models are checked before anything is loaded (issue #11)."""

import inspect

import keras
import pytest

from keras_semkd import configs
from keras_semkd import models
from keras_semkd.distillers import build


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    keras.utils.set_random_seed(0)
    model = models.get("resnet8", num_classes=100)
    paths = {"h5": str(folder / "t.weights.h5"),
             "keras": str(folder / "t.keras")}
    model.save_weights(paths["h5"])
    model.save(paths["keras"])
    return paths


def test_stored_num_classes_reads_the_classifier_width(weights):
    assert build.stored_num_classes(weights["h5"]) == 100
    assert build.stored_num_classes(weights["keras"]) == 100


def test_a_teacher_of_another_class_count_is_one_line(weights):
    recipe = configs.make_recipe("resnet8", "resnet8", "kd", num_classes=10,
                                 teacher_weights=weights["h5"])
    with pytest.raises(ValueError) as err:
        build.build_distiller(recipe)
    assert "\n" not in str(err.value)
    assert "Received: teacher classes=100, num_classes=10" in str(err.value)
    with pytest.raises(ValueError, match="student 'resnet8' has 100 logits"):
        build.build_distiller(recipe.override(teacher_weights=None),
                              teacher=models.get("resnet8", num_classes=10),
                              student=models.get("resnet8", num_classes=100))
    with pytest.raises(FileNotFoundError, match="No teacher weights"):
        build.load_weights_checked(models.get("resnet8", num_classes=100),
                                   weights["h5"] + ".missing", "teacher",
                                   100)
    # Matching counts load.
    teacher = models.get("resnet8", num_classes=100)
    build.load_weights_checked(teacher, weights["h5"], "teacher", 100)


def test_run_level_values_go_only_to_the_terms_that_declare_them():
    from keras_semkd import losses

    # Declared, not sniffed from the signature (issue #12): every loss
    # whose constructor takes weight_decay / num_data declares it.
    declared = {name: losses.LOSSES.get(name).run_values
                for name in ("kd", "at", "fitnet", "crd", "reviewkd")}
    assert declared == {"kd": (), "at": (), "fitnet": ("weight_decay",),
                        "crd": ("num_data", "weight_decay"),
                        "reviewkd": ("weight_decay",)}
    for name in losses.LOSSES.names():
        cls = losses.LOSSES.get(name)
        params = inspect.signature(cls.__init__).parameters
        for arg in ("weight_decay", "num_data"):
            assert (arg in params) == (arg in cls.run_values), (name, arg)
    teacher = models.get("resnet8", num_classes=10)
    student = models.get("resnet8", num_classes=10)
    terms = build.resolve_terms(
        [{"name": "kd", "weight": 0.9}, {"name": "crd", "weight": 0.8},
         {"name": "fitnet", "weight": 1.0, "weight_decay": 0.0}],
        teacher, student, weight_decay=5e-4, num_train_examples=50)
    by_name = {t["name"]: t for t in terms}
    assert "weight_decay" not in by_name["kd"]
    assert by_name["crd"]["weight_decay"] == 5e-4
    assert by_name["crd"]["num_data"] == 50
    assert by_name["fitnet"]["weight_decay"] == 0.0  # the term's own value
    with pytest.raises(ValueError, match="give num_data"):
        build.resolve_terms([{"name": "crd"}], teacher, student)
