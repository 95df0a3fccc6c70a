"""Tests for probabilistic knowledge transfer (`keras_semkd.losses.pkt`)."""

import math

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.pkt import PKTLoss
from keras_semkd.losses.pkt import pkt_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


def np_pkt(f_t, f_s, eps=1e-7):
    def cond(f):
        f = f.reshape(f.shape[0], -1)
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        k = (f @ f.T + 1.0) / 2.0
        return k / k.sum(axis=1, keepdims=True)

    p, q = cond(f_t), cond(f_s)
    return (p * np.log((p + eps) / (q + eps))).mean()


def test_pkt_hand_value():
    # Teacher rows orthogonal: K = [[1, ½], [½, 1]] -> P = [[⅔, ⅓], [⅓, ⅔]].
    # Student rows equal: Q = ½ everywhere.
    f_t = np.eye(2, dtype="float32")
    f_s = np.array([[1.0, 0.0], [2.0, 0.0]], dtype="float32")
    expected = (2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)) / 2
    out = keras.ops.convert_to_numpy(pkt_loss(f_t, f_s))
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_pkt_golden():
    rng = np.random.default_rng(0)
    f_t = rng.standard_normal((7, 2, 2, 3))
    f_s = rng.standard_normal((7, 5))
    loss = PKTLoss(teacher_keys="t", student_keys="s")
    out = keras.ops.convert_to_numpy(
        loss.compute([f_t.astype("float32")], [f_s.astype("float32")])
    )
    assert out.shape == () and loss.reduction == "batch"
    np.testing.assert_allclose(out, np_pkt(f_t, f_s), rtol=1e-5)


def test_pkt_zero_for_same_directions():
    f = np.random.default_rng(1).standard_normal((4, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(pkt_loss(f, 5.0 * f))
    assert float(out) == pytest.approx(0.0, abs=1e-7)


def test_config_round_trip_and_errors():
    loss = PKTLoss(eps=1e-6, teacher_keys="embedding",
                   student_keys="embedding")
    config = loss.get_config()
    assert config["eps"] == 1e-6
    assert PKTLoss.from_config(config).get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, PKTLoss) and again.get_config() == config
    assert base.get("pkt").teacher_keys == ("embedding",)
    with pytest.raises(ValueError, match="eps"):
        PKTLoss(eps=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        PKTLoss(student_keys=["a", "b"], teacher_keys=["a", "b"])


def test_one_step_distiller_fit():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    distiller = Distiller(
        teacher, student,
        [{"name": "pkt", "weight": 30000.0, "teacher_keys": "embedding",
          "student_keys": "stage2"}],  # (32,) vs a flattened 4x4x8 map
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.001))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert "distill/pkt" in logs
    assert np.isfinite(logs["loss"][0])
    assert np.isfinite(logs["distill/pkt"][0])
