"""Tests for attention transfer (`keras_semkd.losses.at`)."""

import math

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.at import ATLoss
from keras_semkd.losses.at import at_loss
from keras_semkd.utils.numerics import adaptive_average_pool
from keras_semkd.utils.numerics import l2_normalize
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


def np_block_pool(f, out_h, out_w):
    """Average pooling by whole blocks (the divisible case)."""
    b, h, w, c = f.shape
    return f.reshape(b, out_h, h // out_h, out_w, w // out_w, c).mean(
        axis=(2, 4)
    )


def np_at_map(f, p=2.0):
    a = (f**p).mean(axis=-1).reshape(f.shape[0], -1)
    norm = np.sqrt((a**2).sum(axis=1, keepdims=True))
    return a / np.maximum(norm, 1e-12)


def np_at_pair(f_t, f_s, p=2.0):
    if f_s.shape[1] > f_t.shape[1]:
        f_s = np_block_pool(f_s, f_t.shape[1], f_t.shape[2])
    elif f_t.shape[1] > f_s.shape[1]:
        f_t = np_block_pool(f_t, f_s.shape[1], f_s.shape[2])
    return ((np_at_map(f_s, p) - np_at_map(f_t, p)) ** 2).mean(axis=1)


def test_adaptive_pool_uses_pytorch_bins():
    # 5 -> 3 cells: PyTorch bins [0, 2), [1, 4), [3, 5); on 1..5 they
    # average to 1.5, 3, 4.5. x[h, w] = 10·(h+1) + (w+1) is separable.
    x = np.array(
        [[10.0 * (h + 1) + (w + 1) for w in range(5)] for h in range(5)],
        dtype="float32",
    ).reshape(1, 5, 5, 1)
    bins = np.array([1.5, 3.0, 4.5])
    expected = 10.0 * bins[:, None] + bins[None, :]
    out = keras.ops.convert_to_numpy(adaptive_average_pool(x, (3, 3)))
    np.testing.assert_allclose(out[0, :, :, 0], expected, rtol=1e-6)


def test_adaptive_pool_divisible_is_block_mean():
    x = np.random.default_rng(0).standard_normal((2, 8, 4, 3))
    out = adaptive_average_pool(x.astype("float32"), (2, 2))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out), np_block_pool(x, 2, 2), atol=1e-6
    )


def test_l2_normalize_matches_torch_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype="float32")
    out = keras.ops.convert_to_numpy(l2_normalize(x, axis=1))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


def test_at_hand_value():
    # Student map [1, 1] -> a = [1/√2, 1/√2]; teacher [1, 0] -> a = [1, 0].
    # mean((1/√2 - 1)², (1/√2)²) = 1 - 1/√2.
    f_s = np.array([1.0, 1.0], dtype="float32").reshape(1, 1, 2, 1)
    f_t = np.array([1.0, 0.0], dtype="float32").reshape(1, 1, 2, 1)
    out = keras.ops.convert_to_numpy(at_loss([f_t], [f_s]))
    np.testing.assert_allclose(out, [1.0 - 1.0 / math.sqrt(2.0)], rtol=1e-6)


def test_at_golden_several_pairs_and_sizes():
    rng = np.random.default_rng(1)
    # pair 1: same size, different channels; pair 2: student larger;
    # pair 3: teacher larger (and negative values: pre-activations).
    teacher = [
        rng.standard_normal((3, 4, 4, 6)),
        rng.standard_normal((3, 2, 2, 8)),
        rng.standard_normal((3, 8, 8, 4)),
    ]
    student = [
        rng.standard_normal((3, 4, 4, 2)),
        rng.standard_normal((3, 4, 4, 3)),
        rng.standard_normal((3, 4, 4, 5)),
    ]
    expected = sum(np_at_pair(t, s) for t, s in zip(teacher, student))
    loss = ATLoss(teacher_keys=["a", "b", "c"])
    out = loss.compute(
        [t.astype("float32") for t in teacher],
        [s.astype("float32") for s in student],
    )
    out = keras.ops.convert_to_numpy(out)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    # RepDistiller's value is the batch mean of the per-example values.
    assert loss.reduction == "per_example"


def test_config_round_trip():
    loss = ATLoss(p=3.0, teacher_keys=["stage1", "stage2"],
                  student_keys=["stage2", "stage3"], name="at_x")
    config = loss.get_config()
    assert config["p"] == 3.0
    assert config["teacher_keys"] == ["stage1", "stage2"]
    clone = ATLoss.from_config(config)
    assert clone.get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, ATLoss) and again.get_config() == config
    assert isinstance(base.get("at"), ATLoss)
    assert ATLoss().teacher_keys == ("stage1", "stage2", "stage3")


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="p must be > 0"):
        ATLoss(p=0)
    loss = ATLoss(teacher_keys="embedding")
    with pytest.raises(ValueError, match="feature maps"):
        loss.check_specs({"embedding": (None, 8)}, {"embedding": (None, 4)})


def test_one_step_distiller_fit():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    # Different channels everywhere; 8x8 vs 4x4 and 4x4 vs 2x2 maps.
    distiller = Distiller(
        teacher, student,
        [{"name": "at", "weight": 1000.0,
          "teacher_keys": ["stage1", "stage2"],
          "student_keys": ["stage2", "stage3"]}],
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert "distill/at" in logs
    assert np.isfinite(logs["loss"][0])
    assert np.isfinite(logs["distill/at"][0]) and logs["distill/at"][0] > 0
