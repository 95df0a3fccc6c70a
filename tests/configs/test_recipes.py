"""Recipes are data: typed, validated, JSON round-trippable, overridable."""

import json
import subprocess
import sys

import pytest

from keras_semkd import configs
from keras_semkd.configs import Recipe
from keras_semkd.configs import Term


def test_every_registered_recipe_round_trips_through_json():
    names = configs.names()
    assert "cpu_smoke" in names
    assert "resnet32x4-resnet8x4-kd" in names
    for name in names:
        recipe = configs.get(name)
        text = recipe.to_json()
        assert Recipe.from_json(text) == recipe
        assert json.loads(text)["name"] == name


def test_protocol_values():
    r = configs.get("resnet32x4-resnet8x4-kd")
    assert r.epochs == 240
    assert r.data.batch_size == 64
    assert r.optimizer.learning_rate == 0.05
    assert r.optimizer.momentum == 0.9
    assert r.optimizer.weight_decay == 5e-4
    assert r.optimizer.milestones == (150, 180, 210)
    assert r.student_loss_weight == 0.1
    assert r.terms == (Term("kd", 0.9, {"temperature": 4.0}),)
    for student in ("MobileNetV2", "ShuffleV1", "ShuffleV2"):
        teacher = {"MobileNetV2": "vgg13"}.get(student, "resnet32x4")
        assert configs.get(f"{teacher}-{student}-kd").optimizer \
            .learning_rate == 0.01


def test_all_standard_pairs_have_every_method():
    names = set(configs.names())
    assert len(configs.STANDARD_PAIRS) == 13
    for teacher, student in configs.STANDARD_PAIRS:
        for method in configs.METHODS:
            assert f"{teacher}-{student}-{method}" in names


def test_overrides():
    r = configs.get("resnet56-resnet20-kd")
    r2 = r.override(**{"optimizer.learning_rate": 0.1, "epochs": 3,
                       "terms.kd.temperature": 2.0, "terms.kd.weight": 0.5,
                       "data.batch_size": 32})
    assert r2.optimizer.learning_rate == 0.1 and r2.epochs == 3
    assert r2.terms[0].kwargs["temperature"] == 2.0
    assert r2.terms[0].weight == 0.5 and r2.data.batch_size == 32
    assert r.epochs == 240  # frozen original untouched
    with pytest.raises(ValueError, match="Unknown config field 'lr'"):
        r.override(**{"optimizer.lr": 0.1})
    with pytest.raises(ValueError, match="has no term 'fitnet'"):
        r.override(**{"terms.fitnet.weight": 1})


def test_validation_errors():
    with pytest.raises(ValueError, match="no teacher"):
        Recipe(name="x", student="resnet8", terms=[Term("kd", 1.0)])
    with pytest.raises(ValueError, match="weight must be a number"):
        Term("kd", "heavy")
    with pytest.raises(ValueError, match="Unknown Recipe field"):
        Recipe.from_dict({"name": "x", "student": "resnet8", "lr": 1})
    with pytest.raises(ValueError, match="milestones must be increasing"):
        configs.OptimizerConfig(milestones=(5, 2))
    with pytest.raises(KeyError, match="Known recipe names"):
        configs.get("resnet32x4-resnet8x4-kdd")
    with pytest.raises(KeyError, match="Known methods"):
        configs.make_recipe("resnet56", "resnet20", "nope")


def test_configs_do_not_import_tensorflow():
    code = ("import sys; import keras_semkd.configs as c; c.names(); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False False"


def test_short_gpu_and_cpu_smoke_recipes():
    r = configs.get("gpu_short-sakd")
    assert (r.teacher, r.student, r.epochs) == ("resnet32x4", "resnet8x4", 60)
    assert r.optimizer.milestones == (37, 45, 52)
    assert [t.name for t in r.terms] == ["sakd", "kd"]
    smoke = configs.get("cpu_smoke")
    assert smoke.epochs == 4 and smoke.data.limit_train == 12800
    assert smoke.optimizer.milestones == (3,)
    assert smoke.data.limit_eval is None


def test_cpu_protocol_recipes():
    variants = configs.recipes.CPU_PROTOCOL_VARIANTS
    assert {"student", "kd", "fitnet", "at", "sakd"} <= set(variants)
    for v in variants:
        r = configs.get(f"cpu_protocol-{v}")
        assert (r.student, r.epochs) == ("resnet8", 4)
        assert r.teacher == (None if v == "student" else "resnet20")
        assert r.optimizer.milestones == (3,)
    sakd = {t.name: t for t in configs.get("cpu_protocol-sakd").terms}
    assert set(sakd) == {"sakd", "kd"}
    ablations = {
        "sakd_no_alignment": ("alignment_weight", 0.0),
        "sakd_no_semantic": ("semantic", "none"),
        "sakd_grouped": ("mode", "grouped"),
    }
    for v, (key, value) in ablations.items():
        terms = {t.name: t for t in configs.get(f"cpu_protocol-{v}").terms}
        assert terms["sakd"].kwargs[key] == value
        # Everything else is the full SAKD recipe.
        rest = {k: x for k, x in terms["sakd"].kwargs.items() if k != key}
        assert rest == {k: x for k, x in sakd["sakd"].kwargs.items()
                        if k != key}
        assert terms["kd"] == sakd["kd"]
    assert configs.get("cpu_protocol-kd_bf16").mixed_precision == \
        "mixed_bfloat16"
    assert configs.get("cpu_protocol-kd").mixed_precision is None
    teacher = configs.get("cpu_protocol-teacher")
    assert (teacher.student, teacher.teacher, teacher.epochs) == \
        ("resnet20", None, 10)
    with pytest.raises(KeyError, match="Unknown CPU-protocol variant"):
        configs.recipes.cpu_protocol("nope")


@pytest.mark.parametrize("changes, message", [
    ({"optimizer.learning_rate": "fast"},
     r"OptimizerConfig\.learning_rate must be a number\. "
     r"Received: learning_rate='fast' \(str\)"),
    ({"epochs": 1.5}, r"Recipe\.epochs must be an integer\. "
                      r"Received: epochs=1\.5 \(float\)"),
    ({"seed": True}, r"Recipe\.seed must be an integer"),
    ({"data.augment": "yes"}, r"DataConfig\.augment must be a boolean"),
    ({"data.batch_size": "64"}, r"DataConfig\.batch_size must be an integer"),
    ({"optimizer.milestones": [1, "a"]},
     r"OptimizerConfig\.milestones must be a list of integers"),
    ({"optimizer.learning_rate": float("nan")},
     r"learning_rate must be a number \(finite\)"),
    ({"data.limit_eval": 0}, r"DataConfig\.limit_eval must be >= 1"),
    ({"optimizer.momentum": 1.5}, r"OptimizerConfig\.momentum must be in"),
    ({"num_classes": 1}, r"Recipe\.num_classes must be >= 2"),
    ({"student": 8}, r"Recipe\.student must be a string"),
])
def test_fields_of_the_wrong_type_or_range_name_field_and_value(changes,
                                                                message):
    with pytest.raises(ValueError, match=message):
        configs.get("cpu_smoke").override(**changes)


def test_integral_and_integer_values_are_normalized():
    r = configs.get("cpu_smoke").override(
        **{"epochs": 2.0, "optimizer.learning_rate": 1,
           "optimizer.milestones": [1, 2]})
    assert r.epochs == 2 and isinstance(r.epochs, int)
    assert isinstance(r.optimizer.learning_rate, float)
    assert r.optimizer.milestones == (1, 2)


def test_diff_lists_the_differing_fields():
    r = configs.get("resnet56-resnet20-kd")
    other = r.override(**{"seed": 4, "terms.kd.temperature": 2.0,
                          "data.batch_size": 32})
    assert r.diff(other) == {
        "data.batch_size": (64, 32), "seed": (0, 4),
        "terms.kd.temperature": (4.0, 2.0)}
    assert r.diff(r) == {}
    assert r.diff(other.to_dict()) == r.diff(other)
