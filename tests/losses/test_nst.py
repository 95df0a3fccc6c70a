"""Tests for neuron selectivity transfer (`keras_semkd.losses.nst`)."""

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.nst import NSTLoss
from keras_semkd.losses.nst import nst_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


def np_block_pool(f, out_h, out_w):
    b, h, w, c = f.shape
    return f.reshape(b, out_h, h // out_h, out_w, w // out_w, c).mean(
        axis=(2, 4)
    )


def np_nst_pair(f_t, f_s):
    if f_s.shape[1] > f_t.shape[1]:
        f_s = np_block_pool(f_s, f_t.shape[1], f_t.shape[2])
    elif f_t.shape[1] > f_s.shape[1]:
        f_t = np_block_pool(f_t, f_s.shape[1], f_s.shape[2])

    def rows(f):  # (B, C, HW), each channel unit-norm over positions
        r = f.reshape(f.shape[0], -1, f.shape[3]).transpose(0, 2, 1)
        return r / np.maximum(np.linalg.norm(r, axis=2, keepdims=True), 1e-12)

    def k(a, b):  # mean over channel pairs of (aᵢ·bⱼ)², per example
        return (np.einsum("bin,bjn->bij", a, b) ** 2).mean(axis=(1, 2))

    t, s = rows(f_t), rows(f_s)
    return k(t, t) + k(s, s) - 2 * k(s, t)


def test_nst_hand_value():
    # Teacher: one channel [1, 0] over 2 positions. Student: channels
    # [1, 0] and [0, 1]. k(t,t) = 1, mean k(s,s) = ½, mean k(s,t) = ½:
    # 1 + ½ - 2·½ = ½.
    f_t = np.array([1.0, 0.0], dtype="float32").reshape(1, 1, 2, 1)
    f_s = np.eye(2, dtype="float32").reshape(1, 1, 2, 2)
    out = keras.ops.convert_to_numpy(nst_loss([f_t], [f_s]))
    np.testing.assert_allclose(out, [0.5], rtol=1e-6)


def test_nst_golden_several_pairs_and_sizes():
    rng = np.random.default_rng(0)
    teacher = [rng.standard_normal((3, 4, 4, 6)),
               rng.standard_normal((3, 2, 2, 5))]
    student = [rng.standard_normal((3, 2, 2, 3)),
               rng.standard_normal((3, 4, 4, 7))]
    loss = NSTLoss(teacher_keys=["a", "b"], student_keys=["c", "d"])
    out = loss.compute([t.astype("float32") for t in teacher],
                       [s.astype("float32") for s in student])
    out = keras.ops.convert_to_numpy(out)
    assert out.shape == (3,) and loss.reduction == "per_example"
    expected = sum(np_nst_pair(t, s) for t, s in zip(teacher, student))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_nst_zero_for_identical_maps():
    f = np.random.default_rng(1).standard_normal((2, 3, 3, 4))
    out = nst_loss([f.astype("float32")], [(2.0 * f).astype("float32")])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), 0.0,
                               atol=1e-6)


def test_config_round_trip_and_errors():
    loss = NSTLoss(teacher_keys=["stage2", "stage3"],
                   student_keys=["stage2", "stage3"], name="nst_23")
    config = loss.get_config()
    clone = NSTLoss.from_config(config)
    assert clone.get_config() == config and clone.name == "nst_23"
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, NSTLoss) and again.get_config() == config
    assert base.get("nst").teacher_keys == ("stage1", "stage2", "stage3")
    with pytest.raises(ValueError, match="feature maps"):
        NSTLoss(teacher_keys="e").check_specs(
            {"e": (None, 8)}, {"e": (None, 8)}
        )


def test_one_step_distiller_fit_default_keys():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    distiller = Distiller(
        teacher, student,
        [("nst", 50.0),  # default keys stage1..3: channels differ
         (NSTLoss(teacher_keys="stage1", student_keys="stage3",
                  name="nst_cross"), 50.0)],  # 8x8 vs 2x2 maps
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert "distill/nst" in logs and "distill/nst_cross" in logs
    assert np.isfinite(logs["loss"][0])
    assert np.isfinite(logs["distill/nst"][0])
    assert np.isfinite(logs["distill/nst_cross"][0])
