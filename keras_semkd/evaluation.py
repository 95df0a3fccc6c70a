"""Evaluation of a trained classifier: top-1/top-5, per-class accuracy and
the confusion matrix, with a progress bar over the batches."""

import keras
import numpy as np


def predict_logits(model, dataset, logits_key="logits", verbose=1):
    """Runs `model` over `(images, labels)` batches.

    Returns `(logits, labels)` as NumPy arrays. `model` may return a dict
    (zoo models, `Distiller`) or the logits directly. Labels given as
    `{"label": ...}` dicts are unwrapped.
    """
    logits, labels = [], []
    steps = None
    try:
        steps = int(dataset.cardinality())
    except (AttributeError, TypeError):
        steps = None
    bar = keras.utils.Progbar(steps if steps and steps > 0 else None,
                              verbose=verbose, unit_name="batch")
    for i, (x, y) in enumerate(dataset):
        out = model(x, training=False)
        if isinstance(out, dict):
            out = out[logits_key]
        if isinstance(y, dict):
            y = y["label"] if "label" in y else y["fine"]
        logits.append(keras.ops.convert_to_numpy(out).astype("float32"))
        labels.append(np.asarray(y).reshape(-1))
        bar.update(i + 1)
    return np.concatenate(logits), np.concatenate(labels)


def classification_report(logits, labels, num_classes=None, k=5):
    """Top-1, top-k, per-class accuracy and the confusion matrix.

    Args:
        logits: `(N, C)` scores.
        labels: `(N,)` integer labels.
        num_classes: defaults to `C`.
        k: the top-k of the second accuracy.

    Returns:
        dict with `top1`, `top{k}`, `per_class` (`(C,)`, NaN for classes
        absent from `labels`), `confusion` (`(C, C)` counts, rows = true
        class) and `num_examples`.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            "logits must be (N, C) with one row per label. Received: "
            f"logits {logits.shape}, labels {labels.shape}"
        )
    num_classes = num_classes or logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must lie in [0, {num_classes}). Received labels in "
            f"[{labels.min()}, {labels.max()}]."
        )
    pred = logits.argmax(axis=1)
    k = min(k, logits.shape[1])
    topk = np.argsort(-logits, axis=1)[:, :k]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(confusion) / support
    return {
        "num_examples": int(labels.size),
        "top1": float((pred == labels).mean()) if labels.size else 0.0,
        f"top{k}": float((topk == labels[:, None]).any(axis=1).mean())
        if labels.size else 0.0,
        "per_class": per_class,
        "confusion": confusion,
    }


def evaluate(model, dataset, num_classes=None, k=5, verbose=1):
    """`classification_report` of `model` on `dataset`."""
    logits, labels = predict_logits(model, dataset, verbose=verbose)
    return classification_report(logits, labels, num_classes=num_classes,
                                 k=k)
