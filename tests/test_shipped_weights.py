"""The teacher weights shipped in `weights/` load into their zoo model and
are the trained teacher of the CPU protocol (weights/README.md)."""

import hashlib
import os
import re

import keras
import numpy as np
import pytest

from keras_semkd import data as data_lib
from keras_semkd import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "weights", "cpu_protocol",
                       "resnet20_cifar100.weights.h5")


def _documented(field):
    with open(os.path.join(ROOT, "weights", "README.md"),
              encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"{field}: `([^`]+)`", text)
    assert match, f"weights/README.md does not state the {field}"
    return match.group(1)


def test_shipped_teacher_matches_its_documented_md5():
    with open(TEACHER, "rb") as f:
        digest = hashlib.md5(f.read()).hexdigest()
    assert digest == _documented("md5")


def test_shipped_teacher_is_trained():
    """Top-1 on the first 2,000 test images is near the documented
    full-test accuracy (an untrained resnet20 scores about 1 %)."""
    if data_lib.default_cifar100_dir() is None:
        pytest.skip("no local CIFAR-100 copy (../shared/data)")
    model = models.get("resnet20", num_classes=100)
    model.load_weights(TEACHER)
    ds, _ = data_lib.get_dataset("cifar100", "test", 250)
    metric = keras.metrics.SparseCategoricalAccuracy()
    for x, y in ds.take(8):
        metric.update_state(y, model(x, training=False)["logits"])
    documented = float(_documented("top-1").rstrip(" %")) / 100
    assert abs(float(metric.result()) - documented) < 0.04
    assert np.isfinite(model.get_weights()[0]).all()


def _protocol_teachers():
    import json

    path = os.path.join(ROOT, "results", "sakd_teachers", "teachers.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("record", _protocol_teachers(),
                         ids=lambda r: r["teacher"])
def test_sakd_protocol_teacher_matches_its_record(record):
    """The SAKD-protocol teachers (weights/sakd_protocol/) have the md5 of
    their result line and score its test top-1 on a test slice."""
    path = os.path.join(ROOT, record["weights"])
    with open(path, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == record["md5"]
    assert record["epochs"] >= 30
    if data_lib.default_cifar100_dir() is None:
        pytest.skip("no local CIFAR-100 copy (../shared/data)")
    model = models.get(record["teacher"], num_classes=100)
    model.load_weights(path)
    ds, _ = data_lib.get_dataset("cifar100", "test", 250)
    metric = keras.metrics.SparseCategoricalAccuracy()
    for x, y in ds.take(8):
        metric.update_state(y, model(x, training=False)["logits"])
    assert abs(100 * float(metric.result()) - record["test_top1"]) < 4.0
