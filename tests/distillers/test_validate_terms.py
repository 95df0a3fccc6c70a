"""`Distiller(validate_terms=False)`: validation runs the student alone
(issue #9 item 5: the teacher's forward pass was a tenth of an epoch of
the SAKD protocol, spent on logs nobody reads)."""

import keras
import numpy as np

from keras_semkd.configs.experiment import Recipe
from keras_semkd.distillers import Distiller
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


class _Counting(keras.layers.Layer):
    """Identity that counts how often it is traced or run."""

    calls = 0

    def call(self, x):
        type(self).calls += 1
        return x


def _counted_teacher():
    base = tiny_model("teacher", widths=(6, 8), seed=1)
    inputs = keras.Input((8, 8, 3))
    outputs = base(_Counting()(inputs))
    return keras.Model(inputs, outputs, name="counted_teacher")


def _distiller(validate_terms, teacher=None, student=None):
    d = Distiller(teacher or _counted_teacher(),
                  student or tiny_model("student", seed=2),
                  [{"name": "kd", "weight": 0.9},
                   {"name": "at", "weight": 1.0,
                    "teacher_keys": ["stage1", "stage2"]}],
                  student_loss_weight=0.1, validate_terms=validate_terms)
    d.compile(optimizer="sgd", metrics=["accuracy"])
    return d


def test_student_only_validation_skips_the_teacher_and_its_logs():
    x, y = tiny_batch(16)
    d = _distiller(False)
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    _Counting.calls = 0
    logs = d.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert _Counting.calls == 0
    assert not [k for k in logs if k.startswith("distill/")]
    assert set(logs) >= {"loss", "student_loss", "accuracy"}
    # The loss is the student loss itself.
    np.testing.assert_allclose(logs["loss"], logs["student_loss"], rtol=1e-6)
    history = d.fit(x, y, batch_size=8, epochs=1, verbose=0,
                    validation_data=(x, y))
    assert "val_distill/kd" not in history.history
    assert "distill/kd" in history.history  # training still logs the terms


def test_student_only_validation_gives_the_same_accuracy_and_student_loss():
    x, y = tiny_batch(16)
    teacher = _counted_teacher()
    student = tiny_model("student", seed=2)
    full = _distiller(True, teacher, student)
    lean = _distiller(False, teacher, student)  # same models, same weights
    _Counting.calls = 0
    a = full.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert _Counting.calls > 0
    b = lean.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert "distill/kd" in a
    np.testing.assert_allclose(b["accuracy"], a["accuracy"])
    np.testing.assert_allclose(b["student_loss"], a["student_loss"],
                               rtol=1e-6)


def test_validate_terms_in_config_and_recipe():
    d = _distiller(False)
    assert d.get_config()["validate_terms"] is False
    assert "validate_terms" not in _distiller(True).get_config()
    recipe = Recipe(name="r", student="resnet8")
    # Written only when not the default, so older config.json files match.
    assert "validate_terms" not in recipe.to_dict()
    lean = Recipe(name="r", student="resnet8", validate_terms=False)
    assert lean.to_dict()["validate_terms"] is False
    assert Recipe.from_dict(lean.to_dict()) == lean
    assert Recipe.from_dict(recipe.to_dict()) == recipe
