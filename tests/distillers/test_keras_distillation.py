"""The same teacher/student pair through `keras.distillation` and ours
(docs/from_keras_distillation.md): equal where the objectives are the same,
and where they differ, by how much and why."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_semkd.distillers import Distiller

BACKEND = keras.backend.backend()
T = 4.0
W = 0.5  # keras.distillation's default student_loss_weight


def _pair(seed=0):
    keras.utils.set_random_seed(seed)

    def cnn(name, width):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                name=f"{name}_conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
        return keras.Model(inputs, keras.layers.Dense(
            5, name=f"{name}_fc")(x), name=name)

    teacher, student = cnn("teacher", 8), cnn("student", 4)
    # A sharper teacher than a fresh init, so KD has something to say.
    teacher.get_layer("teacher_fc").kernel.assign(
        teacher.get_layer("teacher_fc").kernel * 20.0)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, 8).astype("int32")
    return teacher, student, x, y


def _theirs(teacher, student, loss=None):
    kwargs = {} if loss is None else {"loss": loss}
    d = keras.distillation.Distiller(
        teacher, student,
        keras.distillation.LogitsDistillation(temperature=T, **kwargs))
    # A string loss would be keras.losses.sparse_categorical_crossentropy
    # with from_logits=False: pass the instance.
    d.compile(optimizer=keras.optimizers.SGD(0.1),
              loss=keras.losses.SparseCategoricalCrossentropy(
                  from_logits=True))
    return d


def _ours(teacher, student):
    # keras.distillation: W·CE + (1 - W)·Σ w_i L_i; ours: W·CE + Σ w_i L_i.
    d = Distiller(teacher, student,
                  [{"name": "kd", "weight": 1.0 - W, "temperature": T}],
                  student_loss_weight=W)
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    return d


def _our_loss(d, x, y):
    loss, _ = d.compute_distillation_loss(d.teacher_view(x),
                                          d.student_view(x), y)
    return float(ops.convert_to_numpy(loss))


def _their_loss(d, x, y):
    return float(ops.convert_to_numpy(
        d.compute_loss(x, y, d.student(x), training=False)))


def test_kd_equals_keras_distillation_with_a_kl_divergence_instance():
    teacher, student, x, y = _pair()
    ours = _our_loss(_ours(teacher, student), x, y)
    theirs = _their_loss(_theirs(teacher, student,
                                 loss=keras.losses.KLDivergence()), x, y)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_keras_distillation_default_kd_is_kl_of_clipped_logits():
    """Its default `loss="kl_divergence"` resolves to the *function*, so
    the KL is taken of the temperature-scaled logits themselves (clipped to
    [1e-7, 1]) instead of their softmax, and without the T² factor."""
    teacher, student, x, y = _pair()
    theirs = _their_loss(_theirs(teacher, student), x, y)
    ours = _our_loss(_ours(teacher, student), x, y)
    t = ops.convert_to_numpy(teacher(x)) / T
    s = ops.convert_to_numpy(student(x)) / T
    ce = ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
        y, student(x), from_logits=True)).mean()
    clip_t, clip_s = np.clip(t, 1e-7, 1.0), np.clip(s, 1e-7, 1.0)
    kl_of_logits = (clip_t * np.log(clip_t / clip_s)).sum(-1).mean()
    np.testing.assert_allclose(theirs, W * ce + (1 - W) * kl_of_logits,
                               rtol=1e-4)
    assert abs(theirs - ours) > 0.05 * ours


def test_one_training_step_matches_only_with_the_right_kd():
    teacher, student, x, y = _pair()
    start = student.get_weights()

    def step(make):
        student.set_weights(start)
        d = make()
        d.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        return [w.copy() for w in student.get_weights()]

    ours = step(lambda: _ours(teacher, student))
    right = step(lambda: _theirs(teacher, student,
                                 loss=keras.losses.KLDivergence()))
    default = step(lambda: _theirs(teacher, student))
    for a, b in zip(ours, right):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(ours, default)) > 1e-4


class CallCounter(keras.layers.Layer):
    """Counts training-mode calls in a non-trainable variable."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros",
                                     trainable=False, name="calls")

    def call(self, x, training=False):
        if training:
            self.calls.assign(self.calls + 1.0)
        return x


@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="counts variable updates of one TF step")
def test_feature_distillation_runs_the_student_twice_ours_once():
    teacher, _, x, y = _pair()
    inputs = keras.Input((8, 8, 3))
    counter = CallCounter(name="counter")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                            name="student_conv")(counter(inputs))
    student = keras.Model(inputs, keras.layers.Dense(5)(
        keras.layers.GlobalAveragePooling2D()(h)))
    theirs = keras.distillation.Distiller(
        teacher, student,
        [keras.distillation.LogitsDistillation(
            temperature=T, loss=keras.losses.KLDivergence()),
         keras.distillation.FeatureDistillation(
             loss="mse", teacher_layer_name="teacher_conv",
             student_layer_name="student_conv")])
    theirs.compile(optimizer=keras.optimizers.SGD(0.1),
                   loss=keras.losses.SparseCategoricalCrossentropy(
                       from_logits=True))
    theirs.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert float(ops.convert_to_numpy(counter.calls)) == 2.0
    counter.calls.assign(0.0)
    ours = Distiller(
        teacher, student,
        [{"name": "kd", "weight": 1.0, "temperature": T},
         {"name": "fitnet", "weight": 1.0, "teacher_keys": "f"}],
        features={"teacher": {"f": "teacher_conv"},
                  "student": {"f": "student_conv"}})
    ours.compile(optimizer=keras.optimizers.SGD(0.1))
    ours.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert float(ops.convert_to_numpy(counter.calls)) == 1.0
