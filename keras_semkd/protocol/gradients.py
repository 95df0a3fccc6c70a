"""Per-term gradient norms of a Distiller's objective (TensorFlow backend).

Used to set loss weights so that no term dominates the student's update
(docs/method.md, "Gradient norms"): for every weighted term `w_i L_i`
(the student loss, each distillation term and, for terms with
`compute_terms`, each of their sub-terms) the norm of its gradient with
respect to the student's trainable weights, and its cosine with the logit-KD
term's gradient, averaged over batches.
"""

import numpy as np


def _flat(grads):
    import tensorflow as tf

    return tf.concat([tf.reshape(g if g is not None else tf.zeros([0]), [-1])
                      for g in grads], axis=0)


def term_gradients(distiller, x, y):
    """`{name: flat gradient}` of every weighted term on one batch."""
    import tensorflow as tf
    from keras import ops

    student = distiller.student
    variables = student.trainable_variables
    y_labels, indices = distiller._split_targets(y)
    teacher_out = distiller.teacher(x, training=False)
    out = {}
    with tf.GradientTape(persistent=True) as tape:
        student_out = student(x, training=True)
        logits = ops.cast(student_out[distiller.logits_key], "float32")
        values = {"student_loss": distiller.student_loss_weight * ops.mean(
            distiller._student_loss_call(y_labels, logits))}
        for term, weight in zip(distiller.distillation_terms,
                                distiller.distillation_weights):
            t = [teacher_out[k] for k in term.teacher_keys]
            s = [student_out[k] for k in term.student_keys]
            if hasattr(term, "compute_terms"):
                parts = term.compute_terms(t, s, labels=y_labels,
                                           training=True, indices=indices)
                for name, v in parts.items():
                    values[f"{term.name}/{name}"] = weight * ops.mean(v)
            else:
                v = term(t, s, labels=y_labels, training=True,
                         indices=indices)
                values[term.name] = weight * ops.mean(v)
    for name, value in values.items():
        grads = tape.gradient(value, variables)
        if all(g is None for g in grads):
            continue
        out[name] = _flat([g if g is not None else tf.zeros_like(v)
                           for g, v in zip(grads, variables)])
    del tape
    return out


def gradient_report(distiller, dataset, batches=10, reference="kd",
                    also=("student_loss",)):
    """Mean gradient norm of each term and its cosine with `reference`'s
    gradient (and with each term named in `also`) over `batches` batches of
    `dataset` (no update is applied).

    Returns:
        `{name: {"norm": mean, "norm_std": std, "cos_ref": mean cosine with
        reference, "cos_<other>": mean cosine with each of also}}`.
    """
    norms, cosines = {}, {}
    against = {"ref": reference, **{a: a for a in also}}
    for x, y in dataset.take(batches):
        grads = {k: np.asarray(v, dtype="float64")
                 for k, v in term_gradients(distiller, x, y).items()}
        for name, g in grads.items():
            norms.setdefault(name, []).append(float(np.linalg.norm(g)))
            for key, other in against.items():
                r = grads.get(other)
                if r is None:
                    continue
                denom = np.linalg.norm(g) * np.linalg.norm(r)
                cosines.setdefault((name, key), []).append(
                    float(g @ r / denom) if denom > 0 else float("nan"))
    return {name: {"norm": float(np.mean(v)), "norm_std": float(np.std(v)),
                   **{f"cos_{key}": float(np.mean(
                       cosines.get((name, key), [np.nan])))
                      for key in against}}
            for name, v in norms.items()}
