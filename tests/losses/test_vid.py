"""Tests for variational information distillation
(`keras_semkd.losses.vid`)."""

import math

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.vid import VIDLoss
from keras_semkd.losses.vid import vid_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


def np_block_pool(f, out_h, out_w):
    b, h, w, c = f.shape
    return f.reshape(b, out_h, h // out_h, out_w, w // out_w, c).mean(
        axis=(2, 4)
    )


def np_vid_pair(f_t, f_s, kernels, alpha, eps=1e-5):
    if f_s.shape[1] > f_t.shape[1]:
        f_s = np_block_pool(f_s, f_t.shape[1], f_t.shape[2])
    elif f_t.shape[1] > f_s.shape[1]:
        f_t = np_block_pool(f_t, f_s.shape[1], f_s.shape[2])
    k1, k2, k3 = (k.reshape(k.shape[-2], k.shape[-1]) for k in kernels)
    mu = np.maximum(np.maximum(f_s @ k1, 0.0) @ k2, 0.0) @ k3
    var = np.log1p(np.exp(alpha)) + eps
    nll = 0.5 * ((mu - f_t) ** 2 / var + np.log(var))
    return nll.mean(axis=(1, 2, 3))


def test_vid_loss_hand_value():
    # μ - t = 2 everywhere, σ² = e: ½ (4/e + 1).
    t = np.zeros((1, 1, 2, 2), dtype="float32")
    mu = np.full((1, 1, 2, 2), 2.0, dtype="float32")
    var = np.full((2,), math.e, dtype="float32")
    out = keras.ops.convert_to_numpy(vid_loss(t, mu, var))
    np.testing.assert_allclose(out, [0.5 * (4.0 / math.e + 1.0)], rtol=1e-6)


def test_initial_variance_and_regressor_init_follow_repdistiller():
    loss = VIDLoss(teacher_keys="t", student_keys="s")
    loss.build_from_specs({"t": (None, 4, 4, 10)}, {"s": (None, 4, 4, 6)})
    reg = loss.regressors[0]
    var = keras.ops.convert_to_numpy(reg.variance())
    np.testing.assert_allclose(var, np.full(10, 5.0), rtol=1e-6)
    shapes = [tuple(c.kernel.shape) for c in reg.convs]
    # VIDLoss(C_s, C_t, C_t): middle width = teacher channels, no biases.
    assert shapes == [(1, 1, 6, 10), (1, 1, 10, 10), (1, 1, 10, 10)]
    assert all(not c.use_bias for c in reg.convs)
    first = keras.ops.convert_to_numpy(reg.convs[0].kernel)
    assert np.abs(first).max() <= 1.0 / math.sqrt(6)


def test_vid_golden_with_pooling_both_ways():
    rng = np.random.default_rng(0)
    teacher = [rng.standard_normal((3, 4, 4, 5)),
               rng.standard_normal((3, 2, 2, 4))]
    student = [rng.standard_normal((3, 2, 2, 3)),   # teacher pooled
               rng.standard_normal((3, 4, 4, 2))]   # student pooled
    loss = VIDLoss(teacher_keys=["a", "b"], student_keys=["c", "d"],
                   mid_channels=7)
    loss.build_from_specs(
        {"a": (None, 4, 4, 5), "b": (None, 2, 2, 4)},
        {"c": (None, 2, 2, 3), "d": (None, 4, 4, 2)},
    )
    expected = 0.0
    for i, reg in enumerate(loss.regressors):
        alpha = rng.standard_normal(reg.teacher_channels).astype("float32")
        reg.log_scale.assign(alpha)
        kernels = [keras.ops.convert_to_numpy(c.kernel) for c in reg.convs]
        expected = expected + np_vid_pair(teacher[i], student[i], kernels,
                                          alpha)
    out = loss.compute([t.astype("float32") for t in teacher],
                       [s.astype("float32") for s in student])
    out = keras.ops.convert_to_numpy(out)
    assert out.shape == (3,) and loss.reduction == "per_example"
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_weight_decay_covers_kernels_and_log_scale():
    loss = VIDLoss(weight_decay=5e-4, teacher_keys="t", student_keys="s")
    loss.build_from_specs({"t": (None, 2, 2, 3)}, {"s": (None, 2, 2, 2)})
    assert len(loss.losses) == 4
    alpha = math.log(math.exp(5.0 - 1e-5) - 1.0)
    reg = loss.regressors[0]
    kernels = sum(
        float((keras.ops.convert_to_numpy(c.kernel) ** 2).sum())
        for c in reg.convs
    )
    expected = 2.5e-4 * (kernels + 3 * alpha**2)
    total = sum(float(keras.ops.convert_to_numpy(r)) for r in loss.losses)
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_config_round_trip_and_errors():
    loss = VIDLoss(init_pred_var=3.0, eps=1e-4, mid_channels=16,
                   weight_decay=5e-4, teacher_keys=["stage2"],
                   student_keys=["stage3"])
    config = loss.get_config()
    assert config["init_pred_var"] == 3.0 and config["mid_channels"] == 16
    assert VIDLoss.from_config(config).get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, VIDLoss) and again.get_config() == config
    assert isinstance(base.get("vid"), VIDLoss)
    assert VIDLoss().teacher_keys == ("stage1", "stage2", "stage3")
    with pytest.raises(ValueError, match="init_pred_var"):
        VIDLoss(init_pred_var=0.0)
    with pytest.raises(ValueError, match="mid_channels"):
        VIDLoss(mid_channels=0)


def test_one_step_distiller_fit():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    distiller = Distiller(
        teacher, student,
        [{"name": "vid", "weight": 1.0, "weight_decay": 5e-4,
          "teacher_keys": ["stage1", "stage3"],
          "student_keys": ["stage2", "stage2"]}],  # 8x8 vs 4x4, 2x2 vs 4x4
    )
    term = distiller.distillation_terms[0]
    before = keras.ops.convert_to_numpy(term.regressors[0].log_scale)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert "distill/vid" in logs
    assert np.isfinite(logs["loss"][0])
    assert np.isfinite(logs["distill/vid"][0])
    after = keras.ops.convert_to_numpy(term.regressors[0].log_scale)
    assert not np.allclose(before, after)  # the variance is learned


def test_keras_save_load_restores_loss_weights(tmp_path):
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    distiller = Distiller(
        teacher, student,
        [{"name": "vid", "weight": 1.0, "teacher_keys": ["stage1", "stage3"],
          "student_keys": ["stage2", "stage2"]}],
    )
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
