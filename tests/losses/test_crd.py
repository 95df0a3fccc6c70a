"""Tests of the CRD loss: NCE and memory-bank golden values, the Z estimate,
negative sampling, config, and Distiller steps with dataset indices."""

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses import base as losses_base
from keras_semkd.losses.crd import CRDLoss
from keras_semkd.losses.crd import crd_loss
from keras_semkd.losses.crd import crd_memory_update
from keras_semkd.losses.crd import crd_nce_loss
from keras_semkd.losses.crd import crd_sample_negatives
from keras_semkd.losses.crd import crd_scores
from tests.tiny import tiny_model

EPS = 1e-7


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numpy_nce(probs, num_data):
    """RepDistiller's ContrastLoss (Eq. 18), per example, in NumPy."""
    m = probs.shape[1] - 1
    pn = 1.0 / num_data
    pos = probs[:, 0]
    neg = probs[:, 1:]
    log_d1 = np.log(pos / (pos + m * pn + EPS))
    log_d0 = np.log((m * pn) / (neg + m * pn + EPS))
    return -(log_d1 + log_d0.sum(axis=1))


def _numpy_scores(anchor, bank, idx, temperature):
    out = np.zeros(idx.shape)
    for b in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            out[b, k] = np.exp(bank[idx[b, k]] @ anchor[b] / temperature)
    return out


def _numpy_update(bank, v, rows, momentum):
    bank = bank.copy()
    for r, vec in zip(rows, v):
        new = momentum * bank[r] + (1 - momentum) * vec
        bank[r] = new / np.linalg.norm(new)
    return bank


@pytest.fixture
def small():
    """A fixed 6-row bank in 3-D, 2 examples, 3 negatives each."""
    rng = np.random.default_rng(7)
    bank_s = _normalize(rng.normal(size=(6, 3)))
    bank_t = _normalize(rng.normal(size=(6, 3)))
    v_s = _normalize(rng.normal(size=(2, 3)))
    v_t = _normalize(rng.normal(size=(2, 3)))
    idx = np.array([[1, 0, 4, 5], [3, 2, 2, 0]], dtype="int32")
    return bank_s, bank_t, v_s, v_t, idx


def test_nce_loss_hand_computed():
    # K = 1 negative, num_data = 2: m·Pn = 0.5.
    probs = np.array([[0.5, 0.5], [1.5, 0.0]], "float32")
    want = [
        -(np.log(0.5 / (1.0 + EPS)) + np.log(0.5 / (1.0 + EPS))),
        -(np.log(1.5 / (2.0 + EPS)) + np.log(0.5 / (0.5 + EPS))),
    ]
    np.testing.assert_allclose(_np(crd_nce_loss(probs, 2)), want, rtol=1e-6)
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.0, 2.0, size=(4, 9)).astype("float32")
    np.testing.assert_allclose(_np(crd_nce_loss(probs, 50)),
                               _numpy_nce(probs.astype("float64"), 50),
                               rtol=1e-5)


@pytest.mark.parametrize("dense", [False, True])
def test_crd_loss_fixed_bank_and_negatives(small, dense):
    bank_s, bank_t, v_s, v_t, idx = small
    temperature, z_s, z_t = 0.5, 3.0, 7.0
    f32 = lambda a: a.astype("float32")  # noqa: E731
    scores = _np(crd_scores(f32(v_s), f32(bank_t), idx, temperature, dense))
    np.testing.assert_allclose(
        scores, _numpy_scores(v_s, bank_t, idx, temperature), rtol=1e-5)
    got = _np(crd_loss(f32(v_s), f32(v_t), f32(bank_s), f32(bank_t), idx,
                       z_s, z_t, temperature, num_data=6, dense=dense))
    want = (_numpy_nce(_numpy_scores(v_s, bank_t, idx, temperature) / z_s, 6)
            + _numpy_nce(_numpy_scores(v_t, bank_s, idx, temperature) / z_t,
                         6))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_memory_update_rule(small):
    bank_s, _, v_s, _, _ = small
    rows = np.array([4, 1], "int32")
    got = _np(crd_memory_update(bank_s.astype("float32"),
                                v_s.astype("float32"), rows, 0.5))
    want = _numpy_update(bank_s, v_s, rows, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    untouched = [0, 2, 3, 5]
    np.testing.assert_allclose(got[untouched], bank_s[untouched], rtol=1e-6)


def test_negative_sampler_excludes_positive():
    positive = np.array([0, 3, 4, 4], "int32")
    seed = keras.random.SeedGenerator(1)
    neg = _np(crd_sample_negatives(positive, 5, 400, seed))
    assert neg.shape == (4, 400)
    assert neg.min() >= 0 and neg.max() <= 4
    assert not np.any(neg == positive[:, None])
    # Every other index is drawn (uniform over the num_data - 1 others).
    for row, pos in zip(neg, positive):
        assert set(row.tolist()) == set(range(5)) - {int(pos)}


def _built_identity_loss(num_data=6, dim=3, temperature=0.5):
    """A CRD loss whose embedding heads are the identity (so v = norm(f))."""
    loss = CRDLoss(num_data=num_data, feat_dim=dim, nce_k=3,
                   nce_t=temperature, momentum=0.5, seed=0)
    loss.build_from_specs({"embedding": (None, dim)},
                          {"embedding": (None, dim)})
    for head in (loss.embed_student, loss.embed_teacher):
        head.kernel.assign(np.eye(dim, dtype="float32"))
        head.bias.assign(np.zeros(dim, "float32"))
    return loss


def test_crd_layer_golden_step(small):
    """One training call: Z from the first batch, the loss, the bank update;
    a second call keeps Z."""
    bank_s, bank_t, v_s, v_t, idx = small
    loss = _built_identity_loss()
    loss.student_memory.assign(bank_s.astype("float32"))
    loss.teacher_memory.assign(bank_t.astype("float32"))
    f_s, f_t = 2.0 * v_s, 3.0 * v_t  # the heads normalize
    got = _np(loss.compute([f_t.astype("float32")], [f_s.astype("float32")],
                           indices=idx, training=True))
    out_s = _numpy_scores(v_s, bank_t, idx, 0.5)
    out_t = _numpy_scores(v_t, bank_s, idx, 0.5)
    z_s, z_t = out_s.mean() * 6, out_t.mean() * 6
    want = _numpy_nce(out_s / z_s, 6) + _numpy_nce(out_t / z_t, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(_np(loss.z_student)) == pytest.approx(z_s, rel=1e-5)
    assert float(_np(loss.z_teacher)) == pytest.approx(z_t, rel=1e-5)
    new_s = _numpy_update(bank_s, v_s, idx[:, 0], 0.5)
    new_t = _numpy_update(bank_t, v_t, idx[:, 0], 0.5)
    np.testing.assert_allclose(_np(loss.student_memory), new_s, atol=1e-6)
    np.testing.assert_allclose(_np(loss.teacher_memory), new_t, atol=1e-6)

    # Second step: Z stays, scores use the updated banks.
    got2 = _np(loss.compute([f_t.astype("float32")], [f_s.astype("float32")],
                            indices=idx, training=True))
    want2 = (_numpy_nce(_numpy_scores(v_s, new_t, idx, 0.5) / z_s, 6)
             + _numpy_nce(_numpy_scores(v_t, new_s, idx, 0.5) / z_t, 6))
    np.testing.assert_allclose(got2, want2, rtol=1e-5)
    assert float(_np(loss.z_student)) == pytest.approx(z_s, rel=1e-5)


def test_crd_inference_leaves_state_alone(small):
    bank_s, bank_t, v_s, v_t, idx = small
    loss = _built_identity_loss()
    state = [loss.student_memory, loss.teacher_memory, loss.z_student,
             loss.z_teacher]
    before = [_np(v).copy() for v in state]
    value = _np(loss.compute([v_t.astype("float32")],
                             [v_s.astype("float32")], indices=idx[:, 0],
                             training=False))
    assert value.shape == (2,) and np.all(np.isfinite(value))
    after = [_np(v) for v in state]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)


def test_crd_config_round_trip():
    loss = CRDLoss(num_data=100, feat_dim=16, nce_k=32, nce_t=0.1,
                   momentum=0.9, seed=3, weight_decay=5e-4, name="crd_b")
    config = loss.get_config()
    clone = CRDLoss.from_config(config)
    assert clone.get_config() == config
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss))
    assert isinstance(again, CRDLoss) and again.get_config() == config
    by_name = losses_base.get({"name": "crd", "num_data": 10})
    assert isinstance(by_name, CRDLoss) and by_name.needs_indices
    assert (by_name.feat_dim, by_name.nce_k, by_name.nce_t,
            by_name.momentum) == (128, 16384, 0.07, 0.5)


def test_crd_weight_decay_on_heads():
    loss = CRDLoss(num_data=4, feat_dim=3, weight_decay=5e-4)
    loss.build_from_specs({"embedding": (None, 2)},
                          {"embedding": (None, 5)})
    assert len(loss.losses) == 4  # kernels and biases of both heads
    want = sum(2.5e-4 * np.sum(_np(w) ** 2)
               for w in loss.trainable_weights)
    got = sum(float(_np(r)) for r in loss.losses)
    assert got == pytest.approx(want, rel=1e-5)
    plain = _built_identity_loss()
    assert plain.losses == []


def test_crd_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_data"):
        CRDLoss(num_data=1)
    with pytest.raises(ValueError, match="momentum"):
        CRDLoss(num_data=10, momentum=1.0)
    with pytest.raises(ValueError, match="nce_t"):
        CRDLoss(num_data=10, nce_t=0)
    loss = _built_identity_loss()
    f = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match="index"):
        loss.compute([f], [f], indices=None)
    with pytest.raises(ValueError, match="static"):
        CRDLoss(num_data=10).check_specs({"embedding": (None, None)},
                                         {"embedding": (None, 4)})


def _data(n, spatial=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, spatial, spatial, 3)).astype("float32")
    y = rng.integers(0, 5, size=(n,)).astype("int32")
    return x, y


@pytest.mark.parametrize(
    "num_data, nce_k, given_negatives",
    [(16, 16384, False), (300, 4, True)],
    ids=["dense_scores_sampled_negatives", "gathered_rows_given_negatives"],
)
def test_crd_one_distiller_step_updates_bank(num_data, nce_k,
                                             given_negatives):
    # Teacher and student differ in width and depth (16- vs 8-d features).
    teacher = tiny_model("teacher", widths=(8, 16, 16), seed=1)
    student = tiny_model("student", widths=(4, 8), seed=2)
    x, y = _data(8)
    seen = np.arange(8, dtype="int32") + 3
    if given_negatives:
        # RepDistiller-style data: "index" holds (positive, K negatives).
        rng = np.random.default_rng(1)
        index = rng.integers(0, num_data, size=(8, nce_k + 1))
        index[:, 0] = seen
        index = index.astype("int32")
    else:
        index = seen
    distiller = Distiller(
        teacher, student,
        [{"name": "crd", "weight": 0.8, "num_data": num_data,
          "nce_k": nce_k, "seed": 0}],
    )
    term = distiller.distillation_terms[0]
    assert term.dense_scores == (not given_negatives)
    bank_s = _np(term.student_memory).copy()
    bank_t = _np(term.teacher_memory).copy()
    head = _np(term.embed_teacher.kernel).copy()
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    history = distiller.fit(x, {"label": y, "index": index}, batch_size=4,
                            epochs=1, verbose=0)
    values = history.history["distill/crd"]
    assert np.all(np.isfinite(values)) and values[0] > 0
    assert np.isfinite(history.history["loss"][0])
    new_s, new_t = _np(term.student_memory), _np(term.teacher_memory)
    others = np.setdiff1d(np.arange(num_data), seen)
    assert not np.allclose(new_s[seen], bank_s[seen])
    assert not np.allclose(new_t[seen], bank_t[seen])
    np.testing.assert_array_equal(new_s[others], bank_s[others])
    np.testing.assert_array_equal(new_t[others], bank_t[others])
    np.testing.assert_allclose(np.linalg.norm(new_s[seen], axis=1), 1.0,
                               rtol=1e-5)
    assert float(_np(term.z_student)) > 0 and float(_np(term.z_teacher)) > 0
    # The teacher-side head learns too (it is part of the loss).
    assert not np.allclose(_np(term.embed_teacher.kernel), head)


def test_crd_state_survives_keras_save_load(tmp_path):
    teacher = tiny_model("teacher", widths=(8,), seed=1)
    student = tiny_model("student", widths=(4,), seed=2)
    distiller = Distiller(teacher, student, [
        {"name": "crd", "weight": 0.8, "num_data": 10, "nce_k": 4}])
    term = distiller.distillation_terms[0]
    bank = np.random.default_rng(0).normal(size=(10, 128)).astype("float32")
    term.student_memory.assign(bank)
    term.z_teacher.assign(12.5)
    path = str(tmp_path / "crd_distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path).distillation_terms[0]
    assert isinstance(loaded, CRDLoss) and loaded.num_data == 10
    np.testing.assert_array_equal(_np(loaded.student_memory), bank)
    assert float(_np(loaded.z_teacher)) == 12.5
    np.testing.assert_array_equal(_np(loaded.embed_student.kernel),
                                  _np(term.embed_student.kernel))
