"""Tests for relational knowledge distillation (`keras_semkd.losses.rkd`)."""

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.rkd import RKDLoss
from keras_semkd.losses.rkd import rkd_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


def np_pdist(e, eps=1e-12):
    sq = (e**2).sum(axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps))
    np.fill_diagonal(d, 0.0)
    return d


def np_smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean()


def np_angles(e):
    diff = e[None, :, :] - e[:, None, :]
    norm = np.linalg.norm(diff, axis=2, keepdims=True)
    unit = diff / np.maximum(norm, 1e-12)
    return np.einsum("ijd,ikd->ijk", unit, unit)


def np_rkd(f_t, f_s, w_d=25.0, w_a=50.0):
    t = f_t.reshape(f_t.shape[0], -1)
    s = f_s.reshape(f_s.shape[0], -1)
    t_d, s_d = np_pdist(t), np_pdist(s)
    t_d = t_d / t_d[t_d > 0].mean()
    s_d = s_d / s_d[s_d > 0].mean()
    return (w_d * np_smooth_l1(s_d, t_d)
            + w_a * np_smooth_l1(np_angles(s), np_angles(t)))


def test_rkd_hand_value():
    # 1-D points: teacher 0, 1, 2 (mean distance 4/3), student 0, 1, 3
    # (mean distance 2). Normalized distance differences are ∓1/4 (twice
    # each), 0 elsewhere: smooth-L1 = 4 · ½ · (1/4)² / 9 = 1/72. Same
    # ordering, so every angle agrees and the angle term is 0.
    f_t = np.array([[0.0], [1.0], [2.0]], dtype="float32")
    f_s = np.array([[0.0], [1.0], [3.0]], dtype="float32")
    out = keras.ops.convert_to_numpy(rkd_loss(f_t, f_s))
    np.testing.assert_allclose(out, 25.0 / 72.0, rtol=1e-5)


def test_rkd_golden():
    rng = np.random.default_rng(0)
    f_t = rng.standard_normal((6, 2, 2, 3))
    f_s = 0.3 * rng.standard_normal((6, 5))
    loss = RKDLoss(teacher_keys="t", student_keys="s")
    out = keras.ops.convert_to_numpy(
        loss.compute([f_t.astype("float32")], [f_s.astype("float32")])
    )
    assert out.shape == () and loss.reduction == "batch"
    np.testing.assert_allclose(out, np_rkd(f_t, f_s), rtol=1e-5)
    only_angle = rkd_loss(f_t.astype("float32"), f_s.astype("float32"),
                          distance_weight=0.0, angle_weight=2.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(only_angle),
                               np_rkd(f_t, f_s, 0.0, 2.0), rtol=1e-5)


def test_rkd_is_invariant_to_scale_and_finite_for_one_example():
    f = np.random.default_rng(1).standard_normal((5, 4)).astype("float32")
    out = keras.ops.convert_to_numpy(rkd_loss(f, 4.0 * f))
    assert float(out) == pytest.approx(0.0, abs=1e-6)
    single = keras.ops.convert_to_numpy(rkd_loss(f[:1], f[:1] + 1.0))
    assert np.isfinite(single) and float(single) == 0.0


def test_config_round_trip_and_errors():
    loss = RKDLoss(distance_weight=1.0, angle_weight=2.0, eps=1e-8,
                   teacher_keys="embedding", student_keys="embedding")
    config = loss.get_config()
    assert config["distance_weight"] == 1.0 and config["angle_weight"] == 2.0
    assert RKDLoss.from_config(config).get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, RKDLoss) and again.get_config() == config
    default = base.get("rkd")
    assert default.distance_weight == 25.0 and default.angle_weight == 50.0
    with pytest.raises(ValueError, match=">= 0"):
        RKDLoss(angle_weight=-1.0)
    with pytest.raises(ValueError, match="exactly one"):
        RKDLoss(teacher_keys=["a", "b"])


def test_one_step_distiller_fit_with_duplicate_examples():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    x[1], y[1] = x[0], y[0]  # zero distances off the diagonal
    distiller = Distiller(teacher, student, {"rkd": 1.0})  # 32 vs 12 dims
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert "distill/rkd" in logs
    assert np.isfinite(logs["loss"][0])
    assert np.isfinite(logs["distill/rkd"][0])
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all()
               for w in student.weights)
