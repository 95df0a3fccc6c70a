"""Every standard pair x every method builds from its recipe and trains
one step (tiny batch), heterogeneous pairs included."""

import os

import keras
import numpy as np
import pytest

from keras_semkd import configs
from keras_semkd.distillers import build

METHODS = [m for m in configs.METHODS if m != "student"]
NUM_TRAIN = 20000  # memory-bank size for CRD (> its 16,384 negatives)


def _batch(method, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 100, batch).astype("int32")
    if configs.METHODS[method][1] and any(
        t.name == "crd" for t in configs.METHODS[method][1]
    ):
        return x, {"label": y, "index": rng.choice(NUM_TRAIN, batch,
                                                   replace=False)
                   .astype("int32")}
    return x, y


def _one_step(recipe, teacher, student):
    distiller = build.build_distiller(
        recipe, teacher=teacher, student=student,
        num_train_examples=NUM_TRAIN,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.01),
                      run_eagerly=True)
    method = recipe.name.rsplit("-", 1)[1]
    x, y = _batch(method)
    # Terms that fit parts on the teacher first (SAKD's branches): a
    # no-op for the others.
    distiller.prefit_terms(x, y, batch_size=len(x), verbose=0)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]), (recipe.name, logs)
    for term in distiller.distillation_terms:
        assert f"distill/{term.name}" in logs
    return distiller


@pytest.mark.parametrize("teacher,student", configs.STANDARD_PAIRS,
                         ids=[f"{t}-{s}" for t, s in configs.STANDARD_PAIRS])
def test_pair_builds_every_method_and_trains_one_step(teacher, student):
    t = build.build_model(teacher, 100)
    s = build.build_model(student, 100, 5e-4)
    for method in METHODS:
        recipe = configs.get(f"{teacher}-{student}-{method}")
        if method == "sakd":  # 2 prefit batches, not 1000
            recipe = recipe.override(**{"terms.sakd.prefit_steps": 2})
        distiller = _one_step(recipe, t, s)
        # Learned parts of a method never become part of the student.
        student_ids = {id(v) for v in s.weights}
        for term in distiller.distillation_terms:
            assert not any(id(v) in student_ids for v in term.weights)
