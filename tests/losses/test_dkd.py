"""Tests of DKD: golden values, warm-up, config, one Distiller step."""

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base as losses_base
from keras_semkd.losses.dkd import DKDLoss
from keras_semkd.losses.dkd import dkd_loss
from keras_semkd.losses.kd import kd_loss
from tests.tiny import tiny_model


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _numpy_dkd(zt, zs, y, alpha, beta, temperature):
    """DKD written from the paper's definitions, one example at a time."""
    out = []
    for t_row, s_row, label in zip(zt, zs, y):
        pt = _softmax(t_row / temperature)
        ps = _softmax(s_row / temperature)
        # TCKD: binary (target, rest) distributions.
        bt = np.array([pt[label], 1.0 - pt[label]])
        bs = np.array([ps[label], 1.0 - ps[label]])
        tckd = np.sum(bt * np.log(bt / bs))
        # NCKD: distributions over the non-target classes only.
        keep = np.arange(len(t_row)) != label
        qt = _softmax(t_row[keep] / temperature)
        qs = _softmax(s_row[keep] / temperature)
        nckd = np.sum(qt * np.log(qt / qs))
        out.append(temperature**2 * (alpha * tckd + beta * nckd))
    return np.array(out)


@pytest.fixture
def logits():
    rng = np.random.default_rng(3)
    zt = rng.normal(size=(6, 5)).astype("float32") * 3.0
    zs = rng.normal(size=(6, 5)).astype("float32") * 3.0
    y = np.array([0, 1, 2, 3, 4, 2], dtype="int32")
    return zt, zs, y


def test_dkd_golden_values(logits):
    zt, zs, y = logits
    for alpha, beta, temperature in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0)):
        got = keras.ops.convert_to_numpy(
            dkd_loss(zt, zs, y, alpha, beta, temperature))
        want = _numpy_dkd(zt.astype("float64"), zs.astype("float64"), y,
                          alpha, beta, temperature)
        assert got.shape == (6,)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_dkd_hand_computed_two_classes():
    # Two classes: NCKD is a KL between two one-point distributions = 0,
    # TCKD is plain binary KD.
    zt = np.array([[2.0, 0.0]], "float32")
    zs = np.array([[0.0, 0.0]], "float32")
    p = 1.0 / (1.0 + np.exp(-2.0))  # teacher's target probability, T = 1
    want = p * np.log(p / 0.5) + (1 - p) * np.log((1 - p) / 0.5)
    got = keras.ops.convert_to_numpy(
        dkd_loss(zt, zs, np.array([0]), 1.0, 8.0, 1.0))
    np.testing.assert_allclose(got, [want], rtol=1e-5)


def test_dkd_decomposes_kd(logits):
    # The paper's identity: KD = TCKD + (1 - p_t^T) · NCKD, per example.
    zt, zs, y = logits
    temperature = 4.0
    tckd = keras.ops.convert_to_numpy(dkd_loss(zt, zs, y, 1.0, 0.0, 4.0))
    nckd = keras.ops.convert_to_numpy(dkd_loss(zt, zs, y, 0.0, 1.0, 4.0))
    pt = _softmax(zt.astype("float64") / temperature)[np.arange(6), y]
    kd = keras.ops.convert_to_numpy(kd_loss(zt, zs, temperature))
    np.testing.assert_allclose(tckd + (1.0 - pt) * nckd, kd, rtol=1e-4)


def test_dkd_warmup_factor(logits):
    zt, zs, y = logits
    loss = DKDLoss()
    base = keras.ops.convert_to_numpy(dkd_loss(zt, zs, y, 1.0, 8.0, 4.0))
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)):
        loss.set_epoch(epoch)
        assert float(keras.ops.convert_to_numpy(loss.warmup_factor())) == \
            pytest.approx(factor)
        got = keras.ops.convert_to_numpy(loss.compute([zt], [zs], labels=y))
        np.testing.assert_allclose(got, factor * base, rtol=1e-5)
    no_warmup = DKDLoss(warmup_epochs=0)
    assert float(keras.ops.convert_to_numpy(no_warmup.warmup_factor())) == 1


def test_dkd_config_round_trip():
    loss = DKDLoss(alpha=0.5, beta=6.0, temperature=2.0, warmup_epochs=5,
                   name="dkd_b")
    config = loss.get_config()
    clone = DKDLoss.from_config(config)
    assert clone.get_config() == config
    assert (clone.alpha, clone.beta, clone.temperature,
            clone.warmup_epochs) == (0.5, 6.0, 2.0, 5)
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss))
    assert isinstance(again, DKDLoss) and again.get_config() == config
    by_name = losses_base.get({"name": "dkd", "beta": 2.0})
    assert isinstance(by_name, DKDLoss) and by_name.beta == 2.0


def test_dkd_rejects_bad_arguments(logits):
    with pytest.raises(ValueError, match="temperature"):
        DKDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        DKDLoss(beta=-1.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        DKDLoss(warmup_epochs=-2)
    zt, zs, _ = logits
    with pytest.raises(ValueError, match="labels"):
        DKDLoss().compute([zt], [zs], labels=None)
    with pytest.raises(ValueError, match="same number"):
        DKDLoss().check_specs({"logits": (None, 5)}, {"logits": (None, 4)})


def test_dkd_one_distiller_step():
    teacher = tiny_model("teacher", widths=(8, 16, 16), seed=1)
    student = tiny_model("student", widths=(4, 8), seed=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=(8,)).astype("int32")
    distiller = Distiller(teacher, student,
                          [{"name": "dkd", "weight": 1.0}])
    distiller.compile(optimizer="sgd")
    history = distiller.fit(x, y, batch_size=4, epochs=2, verbose=0)
    values = history.history["distill/dkd"]
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(
        history.history["loss"]))
    assert values[0] > 0
    # The Distiller told the loss the epoch (0-based): last one was 1.
    term = distiller.distillation_terms[0]
    assert float(keras.ops.convert_to_numpy(term.epoch)) == 1.0
