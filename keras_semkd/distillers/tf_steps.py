"""The `Distiller`'s train and test steps on the TensorFlow backend.

One module a backend, as Keras keeps its own `backend/<b>/trainer.py`: the
objective (`Distiller.compute_distillation_loss`) is shared, only how a
step runs it differs. `Distiller.train_step` / `test_step` pick the module
of the running backend.
"""

import keras
import tensorflow as tf
from keras import tree

# Private: the rule Keras applies to its own losses under a
# `tf.distribute` strategy (divide by `num_replicas_in_sync`); there is no
# public equivalent (docs/distributed.md lists every private import).
from keras.src.losses.loss import scale_loss_for_distribution


def train_step(distiller, data):
    """One SGD step: teacher forward outside the tape, student forward and
    the objective inside it, gradients over the student and the learned
    parts of the terms only."""
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    teacher_out = distiller.teacher_view(x, training=False)
    teacher_out = tree.map_structure(tf.stop_gradient, teacher_out)
    with tf.GradientTape() as tape:
        student_out = distiller.student_view(x, training=True)
        loss, values = distiller.compute_distillation_loss(
            teacher_out, student_out, y, sw, training=True
        )
        scaled = scale_loss_for_distribution(loss)
        if distiller.optimizer is not None:
            scaled = distiller.optimizer.scale_loss(scaled)
    variables = distiller.trainable_variables
    grads = tape.gradient(scaled, variables)
    distiller.optimizer.apply(grads, variables)
    return distiller._update_trackers(
        loss, values, x, y, student_out[distiller.logits_key], sw
    )


def test_step(distiller, data):
    """The objective and the metrics on one batch, both models frozen."""
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    # `validate_terms=False`: the student alone (no teacher forward pass).
    teacher_out = (distiller.teacher_view(x, training=False)
                   if distiller.validate_terms else None)
    student_out = distiller.student_view(x, training=False)
    loss, values = distiller.compute_distillation_loss(
        teacher_out, student_out, y, sw, training=False
    )
    return distiller._update_trackers(
        loss, values, x, y, student_out[distiller.logits_key], sw
    )
