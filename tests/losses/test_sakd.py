"""Tests of the SAKD loss (uniformized alignment + semantic branch).

The golden values, gradient routing and Distiller tests here pin the first
design's arguments (`V1`, `configs.recipes.SAKD_V1`) and vary them; the
chosen design (the class defaults) is tested in `test_sakd_branches.py`."""

import os

import keras
import numpy as np
import pytest

from keras_semkd.configs.recipes import SAKD_V1
from keras_semkd.distillers.distiller import Distiller
from keras_semkd.layers import AttentionUniformization
from keras_semkd.losses import base as losses_base
from keras_semkd.losses.sakd import SAKDLoss
from keras_semkd.losses.sakd import alignment_distance
from tests.layers.grad_utils import value_and_grads
from tests.layers.test_semantic_head import np_head
from tests.layers.test_uniformization import np_uniformize
from tests.tiny import tiny_batch
from tests.tiny import tiny_model

# Heterogeneous stage pairs: channels and spatial sizes differ.
T_SHAPES = {"a": (None, 4, 4, 6), "b": (None, 2, 2, 8), "logits": (None, 3)}
S_SHAPES = {"a": (None, 6, 6, 4), "b": (None, 4, 4, 5), "logits": (None, 3)}
LABELS = np.array([0, 2, 1], dtype="int32")
#: The first design's arguments (the class defaults before issue #9).
V1 = {k: v for k, v in SAKD_V1.items() if k != "teacher_keys"}


def v1_loss(**kwargs):
    return SAKDLoss(**{**V1, **kwargs})


def features(shapes, seed):
    rng = np.random.default_rng(seed)
    return [np.abs(rng.standard_normal((3,) + shapes[k][1:])).astype(
        "float32") for k in ("a", "b")]


def make_loss(**kwargs):
    config = dict(V1, teacher_keys=("a", "b"), grid=2, temperature=0.5,
                  head_hidden_units=(4,), warmup_epochs=0)
    config.update(kwargs)
    loss = SAKDLoss(**config)
    loss.check_specs(T_SHAPES, S_SHAPES)
    loss.build_from_specs({k: T_SHAPES[k] for k in loss.teacher_keys},
                          {k: S_SHAPES[k] for k in loss.student_keys})
    for i, head in enumerate(list(loss.heads) + list(loss.student_heads)):
        head.set_weights([
            np.random.default_rng(100 + 10 * i + j).standard_normal(
                w.shape).astype("float32") * 0.5
            for j, w in enumerate(head.get_weights())
        ])
    return loss


# -- NumPy reference of the whole objective -----------------------------------
def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(logits, labels):
    return -np_log_softmax(logits)[np.arange(len(labels)), labels]


def np_kd(t, s, tau):
    lt, ls = np_log_softmax(t / tau), np_log_softmax(s / tau)
    return (np.exp(lt) * (lt - ls)).sum(-1) * tau ** 2


def np_distance(ut, us, kind, rows):
    if kind == "kl":
        n = ut.shape[-1] // rows
        pt, ps = ut.reshape(len(ut), rows, n), us.reshape(len(us), rows, n)
        return (pt * np.log(pt / ps)).sum(-1).mean(-1)
    if kind == "mse":
        return ((us - ut) ** 2).sum(-1) / rows
    cos = (us * ut).sum(-1) / np.linalg.norm(us, axis=-1) / np.linalg.norm(
        ut, axis=-1)
    return 1 - cos


def np_sakd(loss, teacher, student, labels):
    mode, grid, tau = loss.mode, loss.grid, loss.temperature
    ut = [np_uniformize(f, mode, grid, tau, loss.groups) for f in teacher]
    us = [np_uniformize(f, mode, grid, tau, loss.groups) for f in student]
    rows = {"spatial": grid[0] * grid[1],
            "grouped": loss.groups * grid[0] * grid[1]}.get(mode, 1)
    total = loss.alignment_weight * np.mean(
        [np_distance(a, b, loss.alignment, rows) for a, b in zip(ut, us)],
        axis=0,
    )
    if loss.semantic == "none":
        return total
    if loss.head_input == "pooled":
        xt = [f.mean(axis=(1, 2)) for f in teacher]
        xs = [f.mean(axis=(1, 2)) for f in student]
    else:
        xt, xs = ut, us
    groups = ([[0, 1]] if loss.head_scope == "joint" else [[0], [1]])
    head_terms, guide_terms = [], []
    for i, group in enumerate(groups):
        it = np.concatenate([xt[k] for k in group], -1)
        is_ = np.concatenate([xs[k] for k in group], -1)
        ht = np_head(it, loss.heads[i].get_weights())
        s_head = (loss.heads[i] if loss.semantic == "shared"
                  else loss.student_heads[i])
        hs = np_head(is_, s_head.get_weights())
        head_terms.append(np_ce(ht, labels))
        guide_terms.append(
            loss.semantic_ce_weight * np_ce(hs, labels)
            + loss.semantic_kd_weight * np_kd(ht, hs, loss.head_temperature)
        )
    return (total + loss.head_weight * np.mean(head_terms, axis=0)
            + np.mean(guide_terms, axis=0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # v1: spatial, kl, shared joint head
        {"alignment_weight": 0.7, "head_weight": 0.5,
         "semantic_ce_weight": 0.3, "semantic_kd_weight": 0.2,
         "head_temperature": 2.0},
        {"alignment": "mse", "semantic": "separate",
         "head_scope": "per_stage"},
        {"mode": "channel", "alignment": "cosine", "head_input": "pooled",
         "semantic": "separate"},
        {"mode": "grouped", "groups": 2, "student_keys": ("a", "a"),
         "teacher_keys": ("a", "b")},
        {"alignment": "cosine", "semantic": "none"},
    ],
)
def test_golden_values(kwargs):
    loss = make_loss(**kwargs)
    teacher = features(T_SHAPES, 1)
    student = [features(S_SHAPES, 2)[("a", "b").index(k)]
               for k in loss.student_keys]
    got = np.asarray(loss(teacher, student, labels=LABELS))
    want = np_sakd(loss, teacher, student, LABELS)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    terms = loss.compute_terms(teacher, student, labels=LABELS)
    np.testing.assert_allclose(
        sum(np.asarray(v) for v in terms.values()), got, rtol=1e-5
    )


def test_hand_computed_alignment():
    # Rows [e^2, 1]/(e^2 + 1) and [1/2, 1/2]: KL(p || u) = log 2 - H(p).
    p = np.exp(2.0) / (np.exp(2.0) + 1.0)
    t = np.log(np.array([[p, 1 - p, 1 - p, p]], dtype="float32"))
    s = np.log(np.full((1, 4), 0.5, dtype="float32"))
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    got = np.asarray(alignment_distance(t, s, "kl", rows=2))
    np.testing.assert_allclose(got, [np.log(2.0) - entropy], rtol=1e-5)
    got = np.asarray(alignment_distance(np.exp(t), np.exp(s), "mse", 2))
    np.testing.assert_allclose(got, [2 * (p - 0.5) ** 2], rtol=1e-5)


def test_identical_features_give_no_alignment_and_no_head_kd():
    feats = features(S_SHAPES, 3)
    same = v1_loss(teacher_keys=("a", "b"), grid=2, temperature=0.5,
                   num_classes=3, warmup_epochs=0)
    same.build_from_specs({k: S_SHAPES[k] for k in ("a", "b")},
                          {k: S_SHAPES[k] for k in ("a", "b")})
    terms = same.compute_terms(feats, feats, labels=LABELS)
    np.testing.assert_allclose(np.asarray(terms["alignment"]), 0.0,
                               atol=1e-6)
    # head(u_T) == head(u_S): the KD part vanishes, CE(student) == CE(head)
    np.testing.assert_allclose(np.asarray(terms["guidance"]),
                               np.asarray(terms["head"]), rtol=1e-5)
    # the loss's uniformization is the standalone layer: one op for T and S
    u = np.asarray(same.uniformization(feats[0]))
    ref = AttentionUniformization(grid=2, temperature=0.5)(feats[0])
    np.testing.assert_array_equal(u, np.asarray(ref))


def _grads(loss, teacher, student):
    """Gradients of the summed loss w.r.t. student features and heads."""
    trainable = [np.asarray(v) for v in loss.trainable_variables]
    non_trainable = [np.asarray(v) for v in loss.non_trainable_variables]
    k = len(student)

    def fn(*args):
        out, _ = loss.stateless_call(
            list(args[k:]), non_trainable, teacher, list(args[:k]),
            labels=LABELS,
        )
        return out

    _, grads = value_and_grads(fn, list(student) + trainable)
    return grads[:k], grads[k:]


def test_gradient_routing_of_the_shared_head():
    teacher, student = features(T_SHAPES, 4), features(S_SHAPES, 5)
    # head fitting only: the head learns, the student gets nothing
    loss = make_loss(alignment_weight=0.0, semantic_ce_weight=0.0,
                     semantic_kd_weight=0.0)
    g_student, g_head = _grads(loss, teacher, student)
    assert all(np.abs(g).max() == 0 for g in g_student)
    assert all(np.abs(g).max() > 0 for g in g_head)
    # guidance only: the student learns, the shared head gets nothing
    loss = make_loss(alignment_weight=0.0, head_weight=0.0)
    g_student, g_head = _grads(loss, teacher, student)
    assert all(np.abs(g).max() > 0 for g in g_student)
    assert all(np.abs(g).max() == 0 for g in g_head)
    # alignment only: the student learns
    loss = make_loss(semantic="none")
    g_student, g_head = _grads(loss, teacher, student)
    assert g_head == []
    assert all(np.abs(g).max() > 0 for g in g_student)


def test_separate_student_head_is_trained_by_guidance():
    teacher, student = features(T_SHAPES, 4), features(S_SHAPES, 5)
    loss = make_loss(semantic="separate", alignment_weight=0.0,
                     head_weight=0.0)
    n_teacher = len(loss.heads[0].trainable_variables)
    _, g_heads = _grads(loss, teacher, student)
    assert all(np.abs(g).max() == 0 for g in g_heads[:n_teacher])
    assert all(np.abs(g).max() > 0 for g in g_heads[n_teacher:])


def test_warmup_ramp():
    loss = make_loss(warmup_epochs=2)
    teacher, student = features(T_SHAPES, 6), features(S_SHAPES, 7)
    full = make_loss(warmup_epochs=0)
    guide = np.asarray(full.compute_terms(teacher, student,
                                          labels=LABELS)["guidance"])
    for epoch, factor in [(0, 0.0), (1, 0.5), (2, 1.0), (5, 1.0)]:
        loss.set_epoch(epoch)
        got = np.asarray(loss.compute_terms(teacher, student,
                                            labels=LABELS)["guidance"])
        np.testing.assert_allclose(got, factor * guide, rtol=1e-5,
                                   atol=1e-7)


def test_alignment_epoch_window():
    loss = make_loss(alignment_epochs=2)
    teacher, student = features(T_SHAPES, 6), features(S_SHAPES, 7)
    full = make_loss()
    want = {k: np.asarray(v) for k, v in full.compute_terms(
        teacher, student, labels=LABELS).items()}
    assert float(want["alignment"].max()) > 0
    for epoch, factor in [(0, 1.0), (1, 1.0), (2, 0.0), (7, 0.0)]:
        loss.set_epoch(epoch)
        got = loss.compute_terms(teacher, student, labels=LABELS)
        np.testing.assert_allclose(np.asarray(got["alignment"]),
                                   factor * want["alignment"], rtol=1e-5,
                                   atol=1e-7)
        # The branch terms are not windowed.
        np.testing.assert_allclose(np.asarray(got["guidance"]),
                                   want["guidance"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_features(dtype):
    loss = make_loss()
    teacher, student = features(T_SHAPES, 8), features(S_SHAPES, 9)
    ref = np.asarray(loss(teacher, student, labels=LABELS))
    low = [keras.ops.cast(keras.ops.convert_to_tensor(f), dtype)
           for f in teacher + student]
    out = loss(low[:2], low[2:], labels=LABELS)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(out), ref, rtol=5e-2)


# -- configuration and validation ---------------------------------------------
def test_registered_and_config_round_trip():
    loss = losses_base.get({"name": "sakd", "mode": "grouped", "groups": 2,
                            "grid": [2, 3], "num_classes": 10,
                            "semantic": "separate"})
    assert isinstance(loss, SAKDLoss) and loss.name == "sakd"
    config = loss.get_config()
    for key in ("mode", "grid", "temperature", "groups", "alignment",
                "alignment_weight", "semantic", "head_scope", "head_input",
                "num_classes", "head_hidden_units", "head_weight",
                "semantic_ce_weight", "semantic_kd_weight",
                "head_temperature", "warmup_epochs", "alignment_epochs",
                "teacher_keys",
                "student_keys"):
        assert key in config, key
        value = getattr(loss, key)
        assert config[key] == (list(value) if isinstance(value, tuple)
                               else value), key
    clone = SAKDLoss.from_config(config)
    assert clone.get_config() == config


def test_num_classes_read_from_logits():
    loss = SAKDLoss(teacher_keys=("a", "b"))
    loss.check_specs(T_SHAPES, S_SHAPES)
    assert loss.num_classes == 3
    with pytest.raises(ValueError, match="num_classes"):
        SAKDLoss(teacher_keys=("a",)).check_specs(
            {"a": T_SHAPES["a"]}, {"a": S_SHAPES["a"]}
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [({"alignment": "l1"}, "alignment=.l1."),
     ({"mode": "channel"}, "alignment='kl' compares attention rows"),
     ({"semantic": "both"}, "semantic=.both."),
     ({"head_scope": "all"}, "head_scope=.all."),
     ({"head_input": "raw"}, "head_input=.raw."),
     ({"alignment_weight": -1}, "alignment_weight=-1"),
     ({"head_temperature": 0}, "head_temperature=0"),
     ({"warmup_epochs": -1}, "warmup_epochs=-1"),
     ({"alignment_epochs": 1.5}, "alignment_epochs=1.5"),
     ({"num_classes": 0}, "num_classes=0"),
     ({"temperature": -0.1}, "temperature=-0.1"),
     ({"teacher_keys": ("a", "b"), "student_keys": ("a",)}, "same length")],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAKDLoss(**kwargs)


def test_invalid_specs():
    with pytest.raises(ValueError, match="teacher output 'logits'.*rank 4"):
        SAKDLoss(teacher_keys=("logits",)).check_specs(T_SHAPES, S_SHAPES)
    with pytest.raises(ValueError, match="student output 'b'.*5 channels"):
        SAKDLoss(teacher_keys=("a", "b"), mode="grouped",
                 groups=2, alignment="kl").check_specs(T_SHAPES, S_SHAPES)
    with pytest.raises(ValueError, match="channel counts must match"):
        SAKDLoss(teacher_keys=("a",), semantic="shared",
                 head_input="pooled").check_specs(
            T_SHAPES, S_SHAPES
        )
    with pytest.raises(ValueError, match="does not have"):
        SAKDLoss(teacher_keys=("stage9",)).check_specs(T_SHAPES, S_SHAPES)
    with pytest.raises(ValueError, match="before build_from_specs"):
        SAKDLoss(teacher_keys=("a", "b"), num_classes=3)(
            features(T_SHAPES, 1), features(S_SHAPES, 2), labels=LABELS
        )
    loss = make_loss()
    with pytest.raises(ValueError, match="labels=None"):
        loss(features(T_SHAPES, 1), features(S_SHAPES, 2))


# -- with the Distiller -------------------------------------------------------
def _heterogeneous_distiller(**sakd_kwargs):
    teacher = tiny_model("teacher", widths=(8, 16), seed=0)
    student = tiny_model("student", widths=(4, 6), seed=1)
    config = {"name": "sakd", "weight": 1.0, **V1,
              # 8x8x8 <-> 4x4x6 and 4x4x16 <-> 8x8x4
              "teacher_keys": ["stage1", "stage2"],
              "student_keys": ["stage2", "stage1"],
              "grid": 4, "head_hidden_units": [8]}
    config.update(sakd_kwargs)
    distiller = Distiller(teacher, student,
                          [config, {"name": "kd", "weight": 0.9}],
                          student_loss_weight=0.1)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    return distiller


def test_distiller_fit_trains_head_not_teacher():
    distiller = _heterogeneous_distiller(warmup_epochs=1)
    term = distiller.distillation_terms[0]
    head_before = [np.array(w) for w in term.trainable_weights]
    teacher_before = [np.array(w) for w in distiller.teacher.weights]
    student_before = [np.array(w) for w in
                      distiller.student.trainable_weights]
    x, y = tiny_batch(batch=8)
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)
    logs = history.history
    assert {"loss", "student_loss", "distill/sakd", "distill/kd"} <= set(
        logs)
    assert all(np.isfinite(v) for values in logs.values() for v in values)
    assert float(np.asarray(term.current_epoch)) == 1.0
    assert all(np.abs(np.array(w) - b).max() > 0
               for w, b in zip(term.trainable_weights, head_before))
    assert all(np.array_equal(np.array(w), b)
               for w, b in zip(distiller.teacher.weights, teacher_before))
    assert any(np.abs(np.array(w) - b).max() > 0 for w, b in
               zip(distiller.student.trainable_weights, student_before))
    assert not any("head" in w.path for w in distiller.student.weights)


def test_distiller_keras_round_trip(tmp_path):
    distiller = _heterogeneous_distiller(semantic="separate",
                                         head_scope="per_stage")
    x, y = tiny_batch(batch=8)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    a, b = distiller.distillation_terms[0], loaded.distillation_terms[0]
    assert b.get_config() == a.get_config()
    # per stage (2) a teacher and a student head of two Dense layers
    assert len(a.trainable_weights) == 2 * 2 * 4
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.array(wa), np.array(wb))
