"""The Keras peers: our `Distiller` (KD, KD + SAKD, KD + stage MSE),
`keras.distillation.Distiller`, teacher inference and the student step
alone, each a compiled model timed through `fit` / `predict`."""

import time

import numpy as np
from absl import flags
from absl import logging

FLAGS = flags.FLAGS


def _jit_compile():
    value = FLAGS.jit_compile.lower()
    if value == "auto":
        return "auto"
    return value in ("1", "true", "yes")


def _metrics():
    """top-1/top-5 as keras_semkd.training logs them. In the
    --mixed_precision child top-5 reads float32 logits: TF's `InTopKV2` has
    no bfloat16 kernel, so Keras' own top-5 metric fails on the bfloat16
    logits of a model built under mixed_bfloat16."""
    import keras
    from keras import ops

    if FLAGS.child != "mixed":
        top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")
    else:
        def top5_float32(y_true, y_pred):
            return keras.metrics.sparse_top_k_categorical_accuracy(
                y_true, ops.cast(y_pred, "float32"), k=5)

        top5 = keras.metrics.MeanMetricWrapper(top5_float32, name="top5")
    return [keras.metrics.SparseCategoricalAccuracy(name="top1"), top5]


def _sgd(weight_decay=None):
    import keras

    return keras.optimizers.SGD(learning_rate=0.05, momentum=0.9,
                                weight_decay=weight_decay)


def _stage_mse_class():
    """A plain per-example MSE between equal-shaped feature maps, as
    `keras.distillation.FeatureDistillation(loss="mse")` computes it."""
    from keras import ops

    from keras_semkd.losses.base import DistillationLoss

    class StageMSE(DistillationLoss):
        def compute(self, teacher, student, labels=None, training=False,
                    indices=None):
            t = ops.cast(teacher[0], "float32")
            s = ops.cast(student[0], "float32")
            return ops.mean(ops.square(t - s), axis=(1, 2, 3))

    return StageMSE


def _layer_of(model, key):
    """Name of the layer producing a zoo model's named output `key`."""
    return model.output[key]._keras_history[0].name


def _step_clock():
    """A Keras callback stamping the end of every train/predict step."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps = []

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                float(logs["loss"])  # the step's results are ready
            self.stamps.append((time.perf_counter(), time.process_time()))

        def on_predict_batch_end(self, batch, logs=None):
            self.stamps.append((time.perf_counter(), time.process_time()))

    return StepClock()


class KerasPeer:
    """A compiled Keras model timed through `fit` (or `predict`)."""

    def __init__(self, model, batch, predict=False):
        import tensorflow as tf

        self.model = model
        self.predict = predict
        x, y = batch
        x = tf.constant(x)
        y = tf.constant(y)
        if predict:
            self.data = tf.data.Dataset.from_tensors(x).repeat()
        else:
            self.data = tf.data.Dataset.from_tensors((x, y)).repeat()

    def run(self, steps):
        """Runs `steps + 1` steps; returns `(wall, cpu)`: the wall-clock
        seconds of each of the last `steps` steps and the process CPU
        seconds they took."""
        clock = _step_clock()
        if self.predict:
            self.model.predict(self.data, steps=steps + 1, verbose=0,
                               callbacks=[clock])
        else:
            self.model.fit(self.data, steps_per_epoch=steps + 1, epochs=1,
                           verbose=0, callbacks=[clock])
        wall, cpu = np.asarray(clock.stamps).T
        return [float(t) for t in np.diff(wall)], float(cpu[-1] - cpu[0])


def _zoo(name, weight_decay=0.0):
    from keras_semkd.distillers import build

    return build.build_model(name, FLAGS.num_classes, weight_decay)


def _sakd_available():
    try:
        import keras_semkd.losses.sakd  # noqa: F401  (registers "sakd")
    except ImportError as e:
        logging.warning("SAKD is not importable (%s): keras_sakd skipped.", e)
        return False
    return True


def _distiller(teacher_name, student_name, terms, batch):
    from keras_semkd.distillers import Distiller

    teacher = _zoo(teacher_name)
    student = _zoo(student_name, weight_decay=5e-4)
    model = Distiller(teacher, student, distillation_losses=terms,
                      student_loss_weight=0.1)
    model.compile(optimizer=_sgd(), metrics=_metrics(),
                  jit_compile=_jit_compile())
    # SAKD's teacher branches are fitted before training, not in a step:
    # two batches here (their quality does not change a step's cost).
    model.prefit_terms(batch[0], batch[1], batch_size=len(batch[0]),
                       steps=2, verbose=0)
    return KerasPeer(model, batch)


KD = {"name": "kd", "weight": 0.9, "temperature": 4.0}


def keras_kd(teacher, student, batch):
    return _distiller(teacher, student, [KD], batch)


def keras_sakd(teacher, student, batch):
    if not _sakd_available():
        return None
    # The SAKD docstring: logit KD is not part of SAKD, add a "kd" term.
    return _distiller(teacher, student,
                      [KD, {"name": "sakd", "weight": 1.0}], batch)


def keras_kd_feat(teacher, student, batch):
    mse = _stage_mse_class()(teacher_keys="stage3", name="stage_mse")
    return _distiller(teacher, student, [KD, (mse, 1.0)], batch)


def keras_distillation(teacher_name, student_name, batch):
    import keras
    from keras import distillation

    from keras_semkd.training import classifier_view

    teacher = _zoo(teacher_name)
    student = _zoo(student_name)  # weight decay: in the optimizer
    t_layer, s_layer = _layer_of(teacher, "stage3"), _layer_of(student,
                                                               "stage3")
    model = distillation.Distiller(
        teacher=classifier_view(teacher),
        student=classifier_view(student),
        distillation_losses=[
            distillation.LogitsDistillation(temperature=4.0),
            distillation.FeatureDistillation(
                loss="mse", teacher_layer_name=t_layer,
                student_layer_name=s_layer,
            ),
        ],
        distillation_loss_weights=[1.0, 1.0],
        student_loss_weight=0.1,
    )
    model.compile(
        optimizer=_sgd(weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_metrics(), jit_compile=_jit_compile(),
    )
    return KerasPeer(model, batch)


def teacher_infer(teacher_name, student_name, batch):
    from keras_semkd.training import classifier_view

    model = classifier_view(_zoo(teacher_name))
    model.compile(jit_compile=_jit_compile())
    return KerasPeer(model, batch, predict=True)


def student_step(teacher_name, student_name, batch):
    import keras

    from keras_semkd.training import classifier_view

    model = classifier_view(_zoo(student_name, weight_decay=5e-4))
    model.compile(
        optimizer=_sgd(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_metrics(), jit_compile=_jit_compile(),
    )
    return KerasPeer(model, batch)
