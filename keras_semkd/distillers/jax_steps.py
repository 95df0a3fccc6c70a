"""The `Distiller`'s train and test steps on the JAX backend (stateless).

One module a backend, as Keras keeps its own `backend/<b>/trainer.py`: the
objective (`Distiller.compute_distillation_loss`) is shared, only how a
step runs it differs. Keras' JAX trainer passes the state explicitly
(`trainable`, `non_trainable`, optimizer and metrics variables) and
expects it back; every model call runs in a `keras.StatelessScope`.
"""

import functools

import jax
import keras


def teacher_outputs(distiller, non_trainable, x):
    """The teacher's outputs (no gradient), read with the given state."""
    mapping = list(zip(distiller.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping):
        out = distiller.teacher_view(x, training=False)
    return jax.tree_util.tree_map(jax.lax.stop_gradient, out)


def loss_and_aux(distiller, trainable, non_trainable, teacher_out, x, y, sw,
                 training, optimizer_variables=None):
    """`(scaled loss, (loss, values, logits, new non-trainable state))`,
    differentiable in `trainable`."""
    mapping = list(zip(distiller.trainable_variables, trainable))
    mapping.extend(zip(distiller.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        student_out = distiller.student_view(x, training=training)
        loss, values = distiller.compute_distillation_loss(
            teacher_out, student_out, y, sw, training=training
        )
    new_non_trainable = []
    for ref, old in zip(distiller.non_trainable_variables, non_trainable):
        new = scope.get_current_value(ref)
        new_non_trainable.append(old if new is None else new)
    scaled = loss
    if training and distiller.optimizer is not None:
        opt_map = list(zip(distiller.optimizer.variables,
                           optimizer_variables))
        with keras.StatelessScope(state_mapping=opt_map):
            scaled = distiller.optimizer.scale_loss(loss)
    aux = (loss, values, student_out[distiller.logits_key],
           new_non_trainable)
    return scaled, aux


def update_metrics(distiller, metrics_variables, loss, values, x, y, logits,
                   sw):
    """`(logs, new metrics variables)`."""
    mapping = list(zip(distiller.metrics_variables, metrics_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = distiller._update_trackers(loss, values, x, y, logits, sw)
    new = []
    for ref in distiller.metrics_variables:
        v = scope.get_current_value(ref)
        new.append(ref.value if v is None else v)
    return logs, new


def train_step(distiller, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = (
        state
    )
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    teacher_out = teacher_outputs(distiller, non_trainable, x)
    grad_fn = jax.value_and_grad(functools.partial(loss_and_aux, distiller),
                                 has_aux=True)
    (_, aux), grads = grad_fn(
        trainable, non_trainable, teacher_out, x, y, sw, True,
        optimizer_variables,
    )
    loss, values, logits, non_trainable = aux
    trainable, optimizer_variables = distiller.optimizer.stateless_apply(
        optimizer_variables, grads, trainable
    )
    logs, metrics_variables = update_metrics(
        distiller, metrics_variables, loss, values, x, y, logits, sw
    )
    return logs, (
        trainable, non_trainable, optimizer_variables, metrics_variables
    )


def test_step(distiller, state, data):
    trainable, non_trainable, metrics_variables = state
    x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
    # `validate_terms=False`: the student alone (no teacher forward pass).
    teacher_out = (teacher_outputs(distiller, non_trainable, x)
                   if distiller.validate_terms else None)
    _, aux = loss_and_aux(
        distiller, trainable, non_trainable, teacher_out, x, y, sw, False
    )
    loss, values, logits, non_trainable = aux
    logs, metrics_variables = update_metrics(
        distiller, metrics_variables, loss, values, x, y, logits, sw
    )
    return logs, (trainable, non_trainable, metrics_variables)
