"""Per-term gradient norms (keras_semkd.protocol.gradients), used to set
SAKD's loss weights (docs/method.md §6)."""

import keras
import numpy as np
import pytest

from keras_semkd.distillers import Distiller
from tests.tiny import tiny_batch
from tests.tiny import tiny_model

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the gradient report uses tf.GradientTape",
)


def _distiller():
    teacher = tiny_model("teacher", widths=(8, 16), seed=0)
    student = tiny_model("student", widths=(4, 6), seed=1)
    distiller = Distiller(
        teacher, student,
        [{"name": "kd", "weight": 0.9},
         {"name": "sakd", "weight": 1.0, "teacher_keys": ["stage1", "stage2"],
          "student_keys": ["stage1", "stage2"], "prefit_steps": 0,
          "head_hidden_units": [8]}],
        student_loss_weight=0.1)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    return distiller


def _manual(distiller, x, y, which):
    """The gradient of one weighted term, by hand."""
    import tensorflow as tf

    student = distiller.student
    t_out = distiller.teacher(x, training=False)
    with tf.GradientTape() as tape:
        s_out = student(x, training=True)
        if which == "student_loss":
            value = 0.1 * tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(
                    y, s_out["logits"], from_logits=True))
        else:
            kd = distiller.distillation_terms[0]
            value = 0.9 * tf.reduce_mean(kd([t_out["logits"]],
                                            [s_out["logits"]], labels=y))
    grads = tape.gradient(value, student.trainable_variables)
    return np.concatenate([np.ravel(g) for g in grads if g is not None])


def test_term_gradients_match_a_hand_written_tape():
    from keras_semkd.protocol import gradients

    distiller = _distiller()
    x, y = tiny_batch(batch=8)
    grads = gradients.term_gradients(distiller, x, y)
    assert {"student_loss", "kd", "sakd/alignment",
            "sakd/guidance"} <= set(grads)
    for name in ("student_loss", "kd"):
        got = np.asarray(grads[name])
        want = _manual(distiller, x, y, name)
        # term_gradients fills None (unreached weights) with zeros.
        np.testing.assert_allclose(got[got != 0], want[want != 0],
                                   rtol=1e-4, atol=1e-7)


def test_gradient_report_norms_and_cosines():
    import tensorflow as tf

    from keras_semkd.protocol import gradients

    distiller = _distiller()
    batches = [tiny_batch(batch=8, seed=s) for s in range(3)]
    ds = tf.data.Dataset.from_tensor_slices(
        (np.concatenate([b[0] for b in batches]),
         np.concatenate([b[1] for b in batches]))).batch(8)
    report = gradients.gradient_report(distiller, ds, batches=3)
    assert report["kd"]["cos_ref"] == pytest.approx(1.0)
    assert report["student_loss"]["cos_student_loss"] == pytest.approx(1.0)
    assert report["kd"]["cos_student_loss"] == pytest.approx(
        report["student_loss"]["cos_ref"])
    norms = [np.linalg.norm(_manual(distiller, x, y, "kd"))
             for x, y in batches]
    assert report["kd"]["norm"] == pytest.approx(np.mean(norms), rel=1e-4)
    assert report["kd"]["norm_std"] == pytest.approx(np.std(norms),
                                                     rel=1e-3, abs=1e-7)
    for name, row in report.items():
        assert np.isfinite(row["norm"]) and -1 <= row["cos_ref"] <= 1, name
