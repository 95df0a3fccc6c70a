"""Tests of ReviewKD: HCL and resizing golden values, ABF fusion, warm-up,
config, and one Distiller step with mismatched channels and sizes."""

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base as losses_base
from keras_semkd.losses.reviewkd import ReviewKDLoss
from keras_semkd.losses.reviewkd import hcl_loss
from keras_semkd.losses.reviewkd import nearest_resize
from keras_semkd.utils.numerics import adaptive_average_pool
from keras_semkd.utils.numerics import adaptive_pool_matrix
from tests.tiny import tiny_model


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _numpy_adaptive_pool(x, size):
    """PyTorch's adaptive_avg_pool2d by its bin definition, NHWC."""
    b, h, w, c = x.shape
    out = np.zeros((b, size, size, c))
    for i in range(size):
        h0, h1 = (i * h) // size, int(np.ceil((i + 1) * h / size))
        for j in range(size):
            w0, w1 = (j * w) // size, int(np.ceil((j + 1) * w / size))
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def _numpy_hcl(fs_list, ft_list):
    """mdistiller's hcl_loss, one value per example."""
    total = 0.0
    for fs, ft in zip(fs_list, ft_list):
        h = fs.shape[1]
        loss = ((fs - ft) ** 2).mean(axis=(1, 2, 3))
        cnt, tot = 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            cnt /= 2.0
            d = _numpy_adaptive_pool(fs, level) - _numpy_adaptive_pool(
                ft, level)
            loss = loss + (d**2).mean(axis=(1, 2, 3)) * cnt
            tot += cnt
        total = total + loss / tot
    return total


def test_adaptive_pool_bins():
    # 6 -> 4: PyTorch's overlapping bins [0,2) [1,3) [3,5) [4,6).
    m = adaptive_pool_matrix(6, 4)
    want = np.array([[.5, .5, 0, 0, 0, 0], [0, .5, .5, 0, 0, 0],
                     [0, 0, 0, .5, .5, 0], [0, 0, 0, 0, .5, .5]])
    np.testing.assert_allclose(m, want)
    rng = np.random.default_rng(0)
    for shape in ((2, 6, 6, 3), (2, 5, 7, 2), (2, 8, 8, 1)):
        x = rng.normal(size=shape).astype("float32")
        for size in (4, 2, 1):
            np.testing.assert_allclose(_np(adaptive_average_pool(x, size)),
                                       _numpy_adaptive_pool(x, size),
                                       rtol=1e-5, atol=1e-6)


def test_hcl_hand_computed_2x2():
    # One 2x2 map, one channel, student 0 and teacher [[1, 2], [3, 4]]:
    # full MSE = 30 / 4; level 1 (mean 2.5) with weight 1/2; levels 4 and
    # 2 are skipped (>= h). HCL = (7.5 + 0.5 · 6.25) / 1.5.
    fs = np.zeros((1, 2, 2, 1), "float32")
    ft = np.array([1.0, 2.0, 3.0, 4.0], "float32").reshape(1, 2, 2, 1)
    got = _np(hcl_loss([fs], [ft]))
    np.testing.assert_allclose(got, [(7.5 + 0.5 * 6.25) / 1.5], rtol=1e-6)
    # A 1x1 map is a plain MSE.
    got = _np(hcl_loss([np.zeros((1, 1, 1, 2), "float32")],
                       [np.full((1, 1, 1, 2), 3.0, "float32")]))
    np.testing.assert_allclose(got, [9.0], rtol=1e-6)


def test_hcl_golden_values_on_tiny_maps():
    rng = np.random.default_rng(1)
    shapes = [(3, 8, 8, 2), (3, 6, 6, 3), (3, 4, 4, 2), (3, 1, 1, 4)]
    fs = [rng.normal(size=s).astype("float32") for s in shapes]
    ft = [rng.normal(size=s).astype("float32") for s in shapes]
    got = _np(hcl_loss(fs, ft))
    want = _numpy_hcl([f.astype("float64") for f in fs],
                      [f.astype("float64") for f in ft])
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_nearest_resize_matches_torch_rule():
    x = np.arange(2 * 3 * 3 * 1, dtype="float32").reshape(2, 3, 3, 1)
    for out in ((6, 6), (5, 4), (2, 2), (3, 3)):
        rows = np.floor(np.arange(out[0]) * 3 / out[0]).astype(int)
        cols = np.floor(np.arange(out[1]) * 3 / out[1]).astype(int)
        want = x[:, rows][:, :, cols]
        np.testing.assert_array_equal(_np(nearest_resize(x, out)), want)
    one = np.ones((1, 1, 1, 2), "float32") * 5
    np.testing.assert_array_equal(_np(nearest_resize(one, (4, 4))),
                                  np.full((1, 4, 4, 2), 5.0))


def _built_loss(teacher_shapes, student_shapes, **kwargs):
    loss = ReviewKDLoss(teacher_keys=list(teacher_shapes),
                        student_keys=list(student_shapes), **kwargs)
    loss.check_specs(teacher_shapes, student_shapes)
    loss.build_from_specs(teacher_shapes, student_shapes)
    return loss


def test_abf_shapes_and_mid_channel():
    teacher = {"t1": (None, 4, 4, 6), "t2": (None, 2, 2, 10),
               "te": (None, 10)}
    student = {"s1": (None, 8, 8, 3), "s2": (None, 4, 4, 5),
               "se": (None, 5)}
    loss = _built_loss(teacher, student)
    assert loss.mid_channel == 5  # min(512, channels of the last feature)
    assert [a.fuse for a in loss.abfs] == [True, True, False]
    rng = np.random.default_rng(0)
    s = [rng.normal(size=(2,) + shape[1:]).astype("float32")
         for shape in student.values()]
    fused = loss.fuse(s)
    assert [tuple(f.shape) for f in fused] == [(2, 4, 4, 6), (2, 2, 2, 10),
                                                (2, 1, 1, 10)]
    assert loss.losses == []
    capped = _built_loss({"te": (None, 10)}, {"se": (None, 5)},
                         max_mid_channel=2, weight_decay=5e-4)
    assert capped.mid_channel == 2 and not capped.abfs[0].fuse
    # Weight decay on every ABF weight: 2 kernels, 2 BN gammas and betas.
    assert len(capped.losses) == 6
    want = sum(2.5e-4 * np.sum(_np(w) ** 2)
               for w in capped.trainable_weights)
    got = sum(float(_np(r)) for r in capped.losses)
    assert got == pytest.approx(want, rel=1e-5)


def test_abf_fusion_math():
    """Fusion with hand-set weights: identity 1x1 convs, BN at identity in
    inference, attention logits (0, ln 3) -> weights (1/2, 3/4)."""
    teacher = {"t1": (None, 2, 2, 1), "te": (None, 1)}
    student = {"s1": (None, 2, 2, 1), "se": (None, 1)}
    loss = _built_loss(teacher, student, warmup_epochs=0)
    shallow = loss.abfs[0]
    shallow.conv1.kernel.assign(np.ones((1, 1, 1, 1), "float32"))
    shallow.att_conv.kernel.assign(np.zeros((1, 1, 2, 2), "float32"))
    shallow.att_conv.bias.assign(np.array([0.0, np.log(3.0)], "float32"))
    deep = loss.abfs[1]
    deep.conv1.kernel.assign(np.full((1, 1, 1, 1), 2.0, "float32"))
    x = np.array([1.0, 2.0, 3.0, 4.0], "float32").reshape(1, 2, 2, 1)
    pooled = np.array([[10.0]], "float32")
    eps = 1e-5
    bn = 1.0 / np.sqrt(1.0 + eps)  # fresh BN in inference: x / sqrt(1+eps)
    _, residual = deep(pooled.reshape(1, 1, 1, 1))
    np.testing.assert_allclose(_np(residual), [[[[20.0 * bn]]]], rtol=1e-5)
    _, fused = shallow(x, residual)
    want = 0.5 * x * bn + 0.75 * 20.0 * bn
    np.testing.assert_allclose(_np(fused), want, rtol=1e-5)


def test_reviewkd_warmup_factor():
    teacher = {"t1": (None, 4, 4, 3), "te": (None, 3)}
    student = {"s1": (None, 4, 4, 2), "se": (None, 2)}
    loss = _built_loss(teacher, student)
    rng = np.random.default_rng(0)
    t = [rng.normal(size=(2, 4, 4, 3)).astype("float32"),
         rng.normal(size=(2, 3)).astype("float32")]
    s = [rng.normal(size=(2, 4, 4, 2)).astype("float32"),
         rng.normal(size=(2, 2)).astype("float32")]
    base = _np(hcl_loss(loss.fuse(s), [t[0], t[1].reshape(2, 1, 1, 3)]))
    for epoch, factor in ((0, 0.05), (4, 0.25), (19, 1.0), (40, 1.0)):
        loss.set_epoch(epoch)
        assert float(_np(loss.warmup_factor())) == pytest.approx(factor)
        np.testing.assert_allclose(_np(loss.compute(t, s)), factor * base,
                                   rtol=1e-5)


def test_reviewkd_config_round_trip():
    loss = ReviewKDLoss(warmup_epochs=5, max_mid_channel=64, levels=(2, 1),
                        weight_decay=5e-4,
                        teacher_keys=["stage2_preact", "embedding"],
                        student_keys=["stage2", "embedding"], name="rkd2")
    config = loss.get_config()
    clone = ReviewKDLoss.from_config(config)
    assert clone.get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss))
    assert isinstance(again, ReviewKDLoss) and again.get_config() == config
    default = losses_base.get("reviewkd")
    assert default.teacher_keys == ("stage1_preact", "stage2_preact",
                                    "stage3_preact", "embedding")
    assert default.student_keys == ("stage1", "stage2", "stage3",
                                    "embedding")
    assert default.warmup_epochs == 20 and default.levels == (4, 2, 1)


def test_reviewkd_rejects_bad_specs():
    with pytest.raises(ValueError, match="warmup_epochs"):
        ReviewKDLoss(warmup_epochs=-1)
    loss = ReviewKDLoss(teacher_keys=["a"], student_keys=["a"])
    with pytest.raises(ValueError, match="static sizes"):
        loss.check_specs({"a": (None, None, None, 4)}, {"a": (None, 4, 4, 4)})
    with pytest.raises(ValueError, match="does not have"):
        loss.check_specs({"b": (None, 4)}, {"a": (None, 4)})


def test_reviewkd_one_distiller_step():
    # Teacher stages at 8, 4, 2 pixels (8/16/16 channels), student at 8, 4
    # (4/8 channels): pairs differ in both channels and size (8->4, 4->2).
    teacher = tiny_model("teacher", widths=(8, 16, 16), seed=1)
    student = tiny_model("student", widths=(4, 8), seed=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=(8,)).astype("int32")
    distiller = Distiller(teacher, student, [{
        "name": "reviewkd", "weight": 1.0,
        "teacher_keys": ["stage2_preact", "stage3_preact", "embedding"],
        "student_keys": ["stage1", "stage2", "embedding"],
    }])
    term = distiller.distillation_terms[0]
    assert term.mid_channel == 8
    kernel = _np(term.abfs[0].conv2.kernel).copy()
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    value = history.history["distill/reviewkd"][0]
    assert np.isfinite(value) and value > 0
    assert np.isfinite(history.history["loss"][0])
    # The ABF blocks are trained with the student.
    assert not np.allclose(_np(term.abfs[0].conv2.kernel), kernel)


def test_reviewkd_state_survives_keras_save_load(tmp_path):
    teacher = tiny_model("teacher", widths=(8,), seed=1)
    student = tiny_model("student", widths=(4,), seed=2)
    distiller = Distiller(teacher, student, [{
        "name": "reviewkd", "weight": 1.0,
        "teacher_keys": ["stage1_preact", "embedding"],
        "student_keys": ["stage1", "embedding"]}])
    term = distiller.distillation_terms[0]
    term.set_epoch(7)
    path = str(tmp_path / "reviewkd_distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path).distillation_terms[0]
    assert isinstance(loaded, ReviewKDLoss)
    assert float(_np(loaded.epoch)) == 7.0
    for a, b in zip(term.weights, loaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(_np(a), _np(b))
