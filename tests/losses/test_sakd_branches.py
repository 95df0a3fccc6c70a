"""SAKD's native-resolution grids, prefitted frozen branches and
confidence-weighted alignment (issue #9)."""

import os

import keras
import numpy as np
import pytest

from keras_semkd.distillers.distiller import Distiller
from keras_semkd.losses.sakd import SAKDLoss
from keras_semkd.losses.sakd import pair_grid
from tests.layers.grad_utils import value_and_grads
from tests.layers.test_uniformization import np_uniformize
from tests.tiny import tiny_batch
from tests.tiny import tiny_model

T_SHAPES = {"a": (None, 4, 4, 6), "b": (None, 2, 2, 8), "logits": (None, 3)}
S_SHAPES = {"a": (None, 8, 8, 4), "b": (None, 4, 4, 5), "logits": (None, 3)}
LABELS = np.array([0, 2, 1], dtype="int32")


def features(shapes, seed):
    rng = np.random.default_rng(seed)
    return [np.abs(rng.standard_normal((3,) + shapes[k][1:])).astype(
        "float32") for k in ("a", "b")]


def build(**kwargs):
    config = dict(teacher_keys=("a", "b"), temperature=0.5,
                  head_hidden_units=(4,), warmup_epochs=0)
    config.update(kwargs)
    loss = SAKDLoss(**config)
    loss.check_specs(T_SHAPES, S_SHAPES)
    loss.build_from_specs({k: T_SHAPES[k] for k in loss.teacher_keys},
                          {k: S_SHAPES[k] for k in loss.student_keys})
    return loss


TWIN = dict(semantic="separate", head_scope="per_stage", head_input="pooled",
            pool_grid=2, prefit_steps=3, grid="smaller")


def test_smaller_grid_per_pair():
    assert pair_grid((None, 32, 32, 16), (None, 16, 16, 12), 8) == (8, 8)
    assert pair_grid((None, 8, 8, 64), (None, 4, 4, 48), 8) == (4, 4)
    assert pair_grid((None, 8, 6, 64), (None, 4, 12, 48), 8) == (4, 6)
    loss = build(grid="smaller", semantic="none", token_norm="position")
    assert [u.grid for u in loss.uniformizations] == [(4, 4), (2, 2)]
    teacher, student = features(T_SHAPES, 1), features(S_SHAPES, 2)
    got = np.asarray(loss.compute_terms(teacher, student)["alignment"])
    # Reference: each pair pooled to its own grid, KL over attention rows.
    want = []
    for (t, s), g in zip(zip(teacher, student), [(4, 4), (2, 2)]):
        ut = np_uniformize(t, "spatial", g, 0.5)
        us = np_uniformize(s, "spatial", g, 0.5)
        n = g[0] * g[1]
        pt, ps = ut.reshape(3, n, n), us.reshape(3, n, n)
        want.append((pt * np.log(pt / ps)).sum(-1).mean(-1))
    np.testing.assert_allclose(got, np.mean(want, axis=0), rtol=2e-4,
                               atol=1e-6)
    config = loss.get_config()
    assert config["grid"] == "smaller" and config["max_grid"] == 8
    assert SAKDLoss.from_config(config).get_config() == config


def test_frozen_branches_are_not_trainable_and_student_branches_are():
    loss = build(**TWIN)
    assert loss.frozen_branches
    assert all(not w.trainable for h in loss.heads for w in h.weights)
    assert all(w.trainable for h in loss.student_heads for w in h.weights)
    assert not loss.is_prefitted()
    teacher, student = features(T_SHAPES, 3), features(S_SHAPES, 4)
    terms = loss.compute_terms(teacher, student, labels=LABELS)
    assert "head" not in terms  # frozen: no head-fitting term
    # gradients reach the student features and the student branches only
    trainable = [np.asarray(v) for v in loss.trainable_variables]
    non_trainable = [np.asarray(v) for v in loss.non_trainable_variables]

    def fn(*args):
        out, _ = loss.stateless_call(list(args[2:]), non_trainable, teacher,
                                     list(args[:2]), labels=LABELS)
        return out

    _, grads = value_and_grads(fn, list(student) + trainable)
    assert all(np.abs(g).max() > 0 for g in grads)
    assert len(trainable) == 2 * 4  # two student branches of 2 Dense layers


def test_confidence_weighting_scales_each_example_alignment():
    plain = build(**TWIN, semantic_ce_weight=0.0, semantic_kd_weight=0.0)
    weighted = build(**TWIN, semantic_ce_weight=0.0, semantic_kd_weight=0.0,
                     confidence_weighting=True)
    for src, dst in zip(plain.heads, weighted.heads):
        dst.set_weights(src.get_weights())
    weighted.confidence_scale.assign(np.array([0.5, 0.25], "float32"))
    teacher, student = features(T_SHAPES, 5), features(S_SHAPES, 6)
    per_stage = []
    for k in range(2):  # alignment of one stage pair, through the loss
        single = build(teacher_keys=(("a", "b")[k],), grid="smaller",
                       semantic="none")
        per_stage.append(np.asarray(single.compute_terms(
            [teacher[k]], [student[k]])["alignment"]))
    conf = []
    for k, head in enumerate(weighted.heads):
        pooled = np.asarray(
            keras.ops.mean(keras.ops.reshape(
                teacher[k], (3, 2, teacher[k].shape[1] // 2, 2,
                             teacher[k].shape[2] // 2, -1)), axis=(2, 4)))
        logits = np.asarray(head(pooled.reshape(3, -1)))
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        conf.append(p[np.arange(3), LABELS] / [0.5, 0.25][k])
    want = np.mean([c * a for c, a in zip(conf, per_stage)], axis=0)
    got = np.asarray(weighted.compute_terms(teacher, student,
                                            labels=LABELS)["alignment"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(plain.compute_terms(teacher, student,
                                       labels=LABELS)["alignment"]),
        np.mean(per_stage, axis=0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"confidence_weighting": True, "prefit_steps": 0},
     "confidence_weighting"),
    ({"grid": "larger"}, "grid=.larger."),
    ({"prefit_steps": -1}, "prefit_steps=-1"),
    ({"prefit_learning_rate": 0}, "prefit_learning_rate=0"),
    ({"pool_grid": 0}, "pool_grid=0"),
    ({"max_grid": 0}, "max_grid=0"),
])
def test_invalid_new_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAKDLoss(**kwargs)


def _distiller(**sakd):
    teacher = tiny_model("teacher", widths=(8, 16), seed=0)
    student = tiny_model("student", widths=(4, 6), seed=1)
    config = {"name": "sakd", "weight": 1.0,
              "teacher_keys": ["stage1", "stage2"], "head_hidden_units": [8],
              **sakd}
    distiller = Distiller(teacher, student,
                          [config, {"name": "kd", "weight": 0.9}],
                          student_loss_weight=0.1)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    return distiller


@pytest.mark.parametrize("variant", [
    dict(TWIN, confidence_weighting=True, token_norm="map"),
    dict(semantic="shared", head_scope="joint", head_input="uniformized",
         prefit_steps=3, semantic_ce_weight=0.0, grid="smaller",
         warmup_epochs=0),
])
def test_fit_prefits_once_then_keeps_branches_frozen(variant, tmp_path):
    distiller = _distiller(**variant)
    term = distiller.distillation_terms[0]
    before = [np.array(w) for h in term.heads for w in h.weights]
    x, y = tiny_batch(batch=16)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert term.is_prefitted()
    fitted = [np.array(w) for h in term.heads for w in h.weights]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(fitted, before))
    scale = np.asarray(term.confidence_scale)
    assert np.all((scale > 0) & (scale <= 1))
    # a second fit neither refits nor trains the frozen branches
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(fitted, [np.array(w) for h in term.heads
                             for w in h.weights]):
        np.testing.assert_array_equal(a, b)
    # the prefitted state travels with the distiller
    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    clone = loaded.distillation_terms[0]
    assert clone.is_prefitted()
    for a, b in zip(term.weights, clone.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_teacher_only_branches_weight_the_alignment_only():
    conf = dict(TWIN, semantic="teacher", confidence_weighting=True)
    loss = build(**conf)
    assert loss.heads and not loss.student_heads
    assert loss.trainable_variables == []
    teacher, student = features(T_SHAPES, 7), features(S_SHAPES, 8)
    terms = loss.compute_terms(teacher, student, labels=LABELS)
    assert set(terms) == {"alignment"}
    twin = build(**dict(conf, semantic="separate"))
    for src, dst in zip(loss.heads, twin.heads):
        dst.set_weights(src.get_weights())
    np.testing.assert_allclose(
        np.asarray(terms["alignment"]),
        np.asarray(twin.compute_terms(teacher, student,
                                      labels=LABELS)["alignment"]),
        rtol=1e-6)
    with pytest.raises(ValueError, match="semantic='teacher'"):
        SAKDLoss(semantic="teacher", prefit_steps=10)


def test_defaults_are_the_chosen_design():
    """`SAKDLoss()` is the design the screening chose (the protocols'
    `sakd` arm, `configs.sakd_protocol.CHOSEN`), not the first one."""
    from keras_semkd.configs import sakd_protocol

    assert SAKDLoss().get_config() == SAKDLoss(
        **sakd_protocol.CHOSEN).get_config()
    v1 = {k: v for k, v in sakd_protocol.SAKD_V1.items()
          if k != "teacher_keys"}
    assert SAKDLoss(**v1).get_config() != SAKDLoss().get_config()


def test_train_on_batch_refuses_unfitted_frozen_branches():
    distiller = _distiller(prefit_steps=2)  # the defaults otherwise
    term = distiller.distillation_terms[0]
    assert term.frozen_branches and term.needs_prefit()
    x, y = tiny_batch(batch=8)
    with pytest.raises(ValueError, match=r"\['sakd'\].*prefit_terms"):
        distiller.train_on_batch(x, y)
    distiller.prefit_terms(x, y, batch_size=8, verbose=0)
    assert not term.needs_prefit()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["distill/sakd"])


def test_prefit_steps_can_be_overridden_per_call():
    distiller = _distiller()  # prefit_steps=1000 by default
    term = distiller.distillation_terms[0]
    x, y = tiny_batch(batch=8)
    with pytest.raises(ValueError, match="steps=0"):
        term.prefit(distiller.teacher_view, x, y, batch_size=8, steps=0)
    model = term.prefit(distiller.teacher_view, x, y, batch_size=8,
                        steps=3, verbose=0)
    assert len(model.history.epoch) == 3  # one batch of 8 per epoch
    assert term.is_prefitted() and not term.needs_prefit()
