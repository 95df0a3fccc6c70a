"""Tests for similarity-preserving distillation (`keras_semkd.losses.sp`)."""

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.sp import SPLoss
from keras_semkd.losses.sp import sp_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


def np_sp(f_t, f_s):
    bsz = f_t.shape[0]

    def sim(f):
        q = f.reshape(bsz, -1)
        g = q @ q.T
        return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)

    return ((sim(f_t) - sim(f_s)) ** 2).sum() / bsz**2


def test_sp_hand_value():
    # Teacher rows e1, e2 -> G_t = I. Student rows (1, 0), (1, 0) -> G_s
    # = all ones, rows normalized to 1/√2. ‖G_t - G_s‖² =
    # 2·(1 - 1/√2)² + 2·(1/√2)², divided by B² = 4.
    f_t = np.eye(2, dtype="float32")
    f_s = np.array([[1.0, 0.0], [1.0, 0.0]], dtype="float32")
    r = 1.0 / np.sqrt(2.0)
    expected = (2 * (1 - r) ** 2 + 2 * r**2) / 4
    out = keras.ops.convert_to_numpy(sp_loss([f_t], [f_s]))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_sp_golden_maps_of_different_shapes():
    rng = np.random.default_rng(0)
    teacher = [rng.standard_normal((5, 4, 4, 6)),
               rng.standard_normal((5, 7))]
    student = [rng.standard_normal((5, 2, 2, 3)),
               rng.standard_normal((5, 2, 2, 9))]
    loss = SPLoss(teacher_keys=["a", "b"], student_keys=["c", "d"])
    out = loss.compute([t.astype("float32") for t in teacher],
                       [s.astype("float32") for s in student])
    out = keras.ops.convert_to_numpy(out)
    assert out.shape == ()
    expected = sum(np_sp(t, s) for t, s in zip(teacher, student))
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert loss.reduction == "batch"


def test_sp_is_invariant_to_feature_scale():
    f = np.random.default_rng(1).standard_normal((4, 3, 3, 2))
    out = sp_loss([f.astype("float32")], [(3.0 * f).astype("float32")])
    assert float(keras.ops.convert_to_numpy(out)) == pytest.approx(
        0.0, abs=1e-10)


def test_config_round_trip():
    loss = SPLoss(teacher_keys=["stage3"], student_keys=["stage4"],
                  name="sp_last")
    config = loss.get_config()
    clone = SPLoss.from_config(config)
    assert clone.get_config() == config and clone.name == "sp_last"
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, SPLoss) and again.get_config() == config
    assert isinstance(base.get("sp"), SPLoss)
    assert SPLoss().teacher_keys == ("stage3",)


def test_one_step_distiller_fit():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    distiller = Distiller(
        teacher, student,
        [{"name": "sp", "weight": 3000.0, "teacher_keys": "stage3",
          "student_keys": "stage2"}],  # (2, 2, 32) vs (4, 4, 8)
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert "distill/sp" in logs
    assert np.isfinite(logs["loss"][0])
    assert np.isfinite(logs["distill/sp"][0])
