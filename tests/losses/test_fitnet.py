"""Tests for FitNet hints (`keras_semkd.losses.fitnet`)."""

import math

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base
from keras_semkd.losses.fitnet import ConvReg
from keras_semkd.losses.fitnet import FitNetLoss
from keras_semkd.losses.fitnet import hint_loss
from tests.tiny import tiny_batch
from tests.tiny import tiny_model


# -- NumPy references of PyTorch's layers (NHWC, Keras kernel layouts) -----
def np_conv2d(x, w, b, stride=1, pad=0):
    """`nn.Conv2d(padding=pad, stride=stride)`; `w` is `(kh, kw, in, out)`."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, w.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + kh,
                      j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, w)
    return out + b


def np_conv_transpose2d(x, w, b, stride=2, pad=1):
    """`nn.ConvTranspose2d(stride, padding)`: each input pixel scatters
    `x · W` into the output, then `pad` rows/cols are cut on every side.
    `w` is Keras' `(kh, kw, out, in)`."""
    bsz, h, wd, _ = x.shape
    kh, kw, c_out, _ = w.shape
    full = np.zeros((bsz, (h - 1) * stride + kh, (wd - 1) * stride + kw,
                     c_out))
    for i in range(h):
        for j in range(wd):
            full[:, i * stride:i * stride + kh,
                 j * stride:j * stride + kw, :] += np.einsum(
                "bc,hwoc->bhwo", x[:, i, j, :], w)
    return full[:, pad:full.shape[1] - pad, pad:full.shape[2] - pad, :] + b


def np_batchnorm_train(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))  # biased, as PyTorch normalizes
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _randomize_bn(reg, rng):
    c = reg.bn.gamma.shape[0]
    reg.bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
    reg.bn.beta.assign(rng.uniform(-0.5, 0.5, c).astype("float32"))


def _golden(s_shape, t_shape, reference):
    rng = np.random.default_rng(0)
    f_s = rng.standard_normal(s_shape).astype("float32")
    f_t = rng.standard_normal(t_shape).astype("float32")
    loss = FitNetLoss(teacher_keys="t", student_keys="s")
    loss.build_from_specs({"t": (None,) + t_shape[1:]},
                          {"s": (None,) + s_shape[1:]})
    reg = loss.regressors[0]
    _randomize_bn(reg, rng)
    w, b = (keras.ops.convert_to_numpy(v) for v in reg.conv.weights)
    gamma = keras.ops.convert_to_numpy(reg.bn.gamma)
    beta = keras.ops.convert_to_numpy(reg.bn.beta)
    y = reference(f_s.astype("float64"), w, b)
    y = np.maximum(np_batchnorm_train(y, gamma, beta), 0.0)
    expected = ((y - f_t) ** 2).mean(axis=(1, 2, 3))
    out = keras.ops.convert_to_numpy(
        loss.compute([f_t], [f_s], training=True)
    )
    assert out.shape == (s_shape[0],)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
    return reg


def test_hint_loss_hand_value():
    t = np.zeros((2, 1, 1, 2), dtype="float32")
    s = np.array([1.0, 3.0, 2.0, 0.0], dtype="float32").reshape(2, 1, 1, 2)
    out = keras.ops.convert_to_numpy(hint_loss(t, s))
    np.testing.assert_allclose(out, [(1 + 9) / 2, (4 + 0) / 2])


def test_student_twice_teacher_size_uses_strided_conv():
    reg = _golden(
        (3, 8, 8, 3), (3, 4, 4, 5),
        lambda x, w, b: np_conv2d(x, w, b, stride=2, pad=1),
    )
    assert tuple(reg.conv.kernel.shape) == (3, 3, 3, 5)
    assert reg.conv.strides == (2, 2) and reg.pad is not None


def test_student_half_teacher_size_uses_transposed_conv():
    reg = _golden(
        (3, 2, 2, 3), (3, 4, 4, 5),
        lambda x, w, b: np_conv_transpose2d(x, w, b, stride=2, pad=1),
    )
    assert isinstance(reg.conv, keras.layers.Conv2DTranspose)
    assert tuple(reg.conv.kernel.shape) == (4, 4, 5, 3)


def test_larger_student_uses_valid_kernel():
    reg = _golden((3, 6, 5, 3), (3, 4, 4, 5), np_conv2d)
    assert tuple(reg.conv.kernel.shape) == (3, 2, 3, 5)
    reg = _golden((3, 4, 4, 3), (3, 4, 4, 5), np_conv2d)
    assert tuple(reg.conv.kernel.shape) == (1, 1, 3, 5)


def test_inference_uses_moving_statistics():
    rng = np.random.default_rng(3)
    f_s = rng.standard_normal((2, 4, 4, 3)).astype("float32")
    f_t = rng.standard_normal((2, 4, 4, 2)).astype("float32")
    loss = FitNetLoss(teacher_keys="t", student_keys="s", use_relu=False)
    loss.build_from_specs({"t": (None, 4, 4, 2)}, {"s": (None, 4, 4, 3)})
    reg = loss.regressors[0]
    w, b = (keras.ops.convert_to_numpy(v) for v in reg.conv.weights)
    y = np_conv2d(f_s, w, b) / np.sqrt(1.0 + 1e-5)  # mean 0, var 1
    expected = ((y - f_t) ** 2).mean(axis=(1, 2, 3))
    out = loss.compute([f_t], [f_s], training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected,
                               rtol=1e-5)


def test_regressor_matches_pytorch_defaults():
    reg = ConvReg((8, 8, 6), (4, 4, 10))
    reg.build((None, 8, 8, 6))
    bound = 1.0 / math.sqrt(6 * 9)  # kaiming_uniform(a=√5): 1/√fan_in
    kernel = keras.ops.convert_to_numpy(reg.conv.kernel)
    bias = keras.ops.convert_to_numpy(reg.conv.bias)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > bound / 2
    assert np.abs(bias).max() <= bound
    assert reg.bn.momentum == pytest.approx(0.9)  # PyTorch momentum 0.1
    assert reg.bn.epsilon == pytest.approx(1e-5)
    assert reg.compute_output_shape((None, 8, 8, 6)) == (None, 4, 4, 10)


def test_unsupported_sizes_raise():
    with pytest.raises(ValueError, match="student size"):
        ConvReg((3, 3, 4), (8, 8, 4))
    loss = FitNetLoss(teacher_keys="t", student_keys="s")
    with pytest.raises(ValueError, match="feature maps"):
        loss.build_from_specs({"t": (None, 8)}, {"s": (None, 4, 4, 2)})
    with pytest.raises(ValueError, match="build_from_specs"):
        loss.compute([np.zeros((1, 2, 2, 1))], [np.zeros((1, 2, 2, 1))])


def test_build_is_idempotent_for_the_same_shapes_only():
    loss = FitNetLoss(teacher_keys="t", student_keys="s")
    loss.build_from_specs({"t": (None, 4, 4, 5)}, {"s": (None, 8, 8, 3)})
    kernel = loss.regressors[0].conv.kernel
    loss.build_from_specs({"t": (None, 4, 4, 5)}, {"s": (None, 8, 8, 3)})
    assert loss.regressors[0].conv.kernel is kernel
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        loss.build_from_specs({"t": (None, 4, 4, 5)}, {"s": (None, 8, 8, 4)})
    with pytest.raises(ValueError, match="does not have"):
        loss.build_from_specs({"x": (None, 4, 4, 5)}, {"s": (None, 8, 8, 3)})


def test_weight_decay_regularizes_every_regressor_weight():
    loss = FitNetLoss(weight_decay=5e-4, teacher_keys="t", student_keys="s")
    loss.build_from_specs({"t": (None, 4, 4, 5)}, {"s": (None, 8, 8, 3)})
    reg = loss.regressors[0]
    weights = [reg.conv.kernel, reg.conv.bias, reg.bn.gamma, reg.bn.beta]
    expected = sum(
        2.5e-4 * float((keras.ops.convert_to_numpy(w) ** 2).sum())
        for w in weights
    )
    total = sum(float(keras.ops.convert_to_numpy(r)) for r in loss.losses)
    assert len(loss.losses) == 4
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_config_round_trip():
    loss = FitNetLoss(use_relu=False, weight_decay=1e-4,
                      teacher_keys="stage3", student_keys="stage2")
    config = loss.get_config()
    assert config["use_relu"] is False and config["weight_decay"] == 1e-4
    clone = FitNetLoss.from_config(config)
    assert clone.get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert isinstance(again, FitNetLoss) and again.get_config() == config
    reg = ConvReg((4, 4, 2), (2, 2, 3), use_relu=False, weight_decay=1e-4)
    assert ConvReg.from_config(reg.get_config()).get_config() == (
        reg.get_config()
    )
    assert isinstance(base.get("fitnet"), FitNetLoss)
    assert FitNetLoss().teacher_keys == ("stage2",)


def test_one_step_distiller_fit():
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    x, y = tiny_batch(batch=8, spatial=8)
    distiller = Distiller(
        teacher, student,
        [("fitnet", 100.0),  # default: stage2 (4x4x16) <- stage2 (4x4x8)
         (FitNetLoss(teacher_keys="stage2", student_keys="stage1",
                     name="fitnet_down"), 100.0),  # strided conv
         (FitNetLoss(teacher_keys="stage1", student_keys="stage2",
                     name="fitnet_up"), 100.0)],  # transposed conv
    )
    kernels = [t.regressors[0].conv.kernel
               for t in distiller.distillation_terms]
    before = [keras.ops.convert_to_numpy(k) for k in kernels]
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    for name in ("fitnet", "fitnet_down", "fitnet_up"):
        assert np.isfinite(logs[f"distill/{name}"][0])
    for old, new in zip(before, kernels):
        # The regressors are trained, and they are not student weights.
        assert not np.allclose(old, keras.ops.convert_to_numpy(new))
    student_ids = {id(w) for w in student.weights}
    term_weights = [w for t in distiller.distillation_terms
                    for w in t.weights]
    assert not any(id(w) in student_ids for w in term_weights)


def test_keras_save_load_restores_loss_weights(tmp_path):
    teacher = tiny_model("teacher", widths=(8, 16, 32), spatial=8, seed=0)
    student = tiny_model("student", widths=(4, 8, 12), spatial=8, seed=1)
    distiller = Distiller(teacher, student, {"fitnet": 100.0})
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
