"""Tests for correlation congruence (`keras_semkd.losses.cc`)."""

import math

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.cc import CCLoss
from keras_semkd.losses.cc import cc_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


def test_cc_hand_value():
    # δ rows (1, 2), (3, 4), (5, 6): (1·3 + 2·4 + 3·5 + 4·6) / 2 = 25.
    e_t = np.zeros((3, 2), dtype="float32")
    e_s = -np.array([[1, 2], [3, 4], [5, 6]], dtype="float32")
    out = keras.ops.convert_to_numpy(cc_loss(e_t, e_s))
    np.testing.assert_allclose(out, 25.0)


def test_cc_batch_of_one_is_zero_not_nan():
    out = cc_loss(np.ones((1, 4), "float32"), np.zeros((1, 4), "float32"))
    assert float(keras.ops.convert_to_numpy(out)) == 0.0


def test_cc_golden_through_learned_embeddings():
    rng = np.random.default_rng(0)
    f_t = rng.standard_normal((6, 2, 2, 5)).astype("float32")  # flattened
    f_s = rng.standard_normal((6, 7)).astype("float32")
    loss = CCLoss(feat_dim=4, teacher_keys="t", student_keys="s")
    loss.build_from_specs({"t": (None, 2, 2, 5)}, {"s": (None, 7)})
    w_t, b_t = (keras.ops.convert_to_numpy(v) for v in loss.embed_t.weights)
    w_s, b_s = (keras.ops.convert_to_numpy(v) for v in loss.embed_s.weights)
    assert w_t.shape == (20, 4) and w_s.shape == (7, 4)
    delta = np.abs((f_s @ w_s + b_s) - (f_t.reshape(6, -1) @ w_t + b_t))
    expected = (delta[:-1] * delta[1:]).sum(axis=1).mean()
    out = keras.ops.convert_to_numpy(loss.compute([f_t], [f_s]))
    assert out.shape == () and loss.reduction == "batch"
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_embeddings_use_pytorch_linear_init_and_weight_decay():
    loss = CCLoss(weight_decay=5e-4)
    loss.build_from_specs({"embedding": (None, 64)},
                          {"embedding": (None, 16)})
    for embed, dim_in in ((loss.embed_t, 64), (loss.embed_s, 16)):
        assert tuple(embed.kernel.shape) == (dim_in, 128)
        bound = 1.0 / math.sqrt(dim_in)
        for w in (embed.kernel, embed.bias):
            assert np.abs(keras.ops.convert_to_numpy(w)).max() <= bound
    assert len(loss.losses) == 4  # two kernels, two biases


def test_config_round_trip_and_errors():
    loss = CCLoss(feat_dim=64, weight_decay=5e-4, teacher_keys="embedding",
                  student_keys="stage3")
    config = loss.get_config()
    assert config["feat_dim"] == 64 and config["weight_decay"] == 5e-4
    assert CCLoss.from_config(config).get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, CCLoss) and again.get_config() == config
    assert isinstance(base.get("cc"), CCLoss)
    with pytest.raises(ValueError, match="feat_dim"):
        CCLoss(feat_dim=0)
    with pytest.raises(ValueError, match="exactly one"):
        CCLoss(teacher_keys=["a", "b"])
    with pytest.raises(ValueError, match="weight_decay"):
        CCLoss(weight_decay=-1.0)


def test_one_step_distiller_fit():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    distiller = Distiller(teacher, student, {"cc": 0.02})
    term = distiller.distillation_terms[0]
    before = keras.ops.convert_to_numpy(term.embed_t.kernel)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert "distill/cc" in logs
    assert np.isfinite(logs["loss"][0]) and np.isfinite(logs["distill/cc"][0])
    # Both embeddings (the teacher's too) are trained with the student.
    assert not np.allclose(before,
                           keras.ops.convert_to_numpy(term.embed_t.kernel))


def test_keras_save_load_restores_loss_weights(tmp_path):
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    distiller = Distiller(teacher, student, {"cc": 0.02})
    term = distiller.distillation_terms[0]
    rng = np.random.default_rng(0)
    for w in term.weights:
        w.assign(rng.standard_normal(tuple(w.shape)).astype("float32"))
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    clone = loaded.distillation_terms[0]
    assert type(clone) is type(term)
    assert clone.get_config() == term.get_config()
    assert [w.path for w in clone.weights] == [w.path for w in term.weights]
    for a, b in zip(term.weights, clone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
