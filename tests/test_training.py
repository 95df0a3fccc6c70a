"""Run directories: resume after a kill, NaN stop, seed determinism."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="run directories are exercised on the TF backend",
)

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import keras
    from keras_semkd import configs, models, training

    run_dir, teacher_path, die_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lr = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
    recipe = configs.Recipe(
        name="resume", teacher="resnet8", student="resnet8",
        terms=configs.METHODS["kd"][1], student_loss_weight=0.1, epochs=2,
        optimizer=configs.OptimizerConfig(learning_rate=lr, milestones=(1,)),
        data=configs.DataConfig(dataset="synthetic", batch_size=32,
                                limit_train=256, limit_eval=64),
        num_classes=10, seed=3, teacher_weights=teacher_path)

    class Die(keras.callbacks.Callback):
        def __init__(self, runner):
            super().__init__()
            self.runner, self.seen = runner, 0
        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            done = runner.history and len(runner.history) or 0
            if die_at and done * runner.steps_per_epoch + batch + 1 == die_at:
                os.kill(os.getpid(), signal.SIGKILL)

    runner = training.Runner(recipe, run_dir, checkpoint_every=3)
    report = runner.run(verbose=0, callbacks=[Die(runner)])
    print("DONE", report["last"]["top1"])
""")


def _run(args, check=True):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    from keras_semkd import models

    keras.utils.set_random_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "t.weights.h5")
    models.get("resnet8", num_classes=10).save_weights(path)
    return path


def _history(run_dir, timing=False):
    with open(os.path.join(run_dir, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    if timing:
        return [(int(r["steps"]), float(r["seconds"])) for r in rows]
    for r in rows:
        r.pop("seconds")
        r.pop("steps")
    return rows


def _report(run_dir):
    with open(os.path.join(run_dir, "report.json")) as f:
        return json.load(f)


def _weights(run_dir):
    from keras_semkd import models

    m = models.get("resnet8", num_classes=10)
    m.load_weights(os.path.join(run_dir, "checkpoints", "last.weights.h5"))
    return [np.array(w) for w in m.weights]


def test_killed_run_resumes_to_the_same_weights_and_metrics(
        tmp_path, teacher_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    _run([full, teacher_path, 0])
    # 8 steps per epoch, state every 3 steps: die at global step 13
    # (epoch 2, step 5); the last state is global step 12 (epoch 2, step 4).
    proc = _run([killed, teacher_path, 13], check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with open(os.path.join(killed, "state.json")) as f:
        meta = json.load(f)
    assert (meta["epoch"], meta["step"]) == (1, 4)
    assert len(_history(killed)) == 1
    out = _run([killed, teacher_path, 0]).stdout
    assert "DONE" in out
    assert _history(killed) == _history(full)
    for a, b in zip(_weights(killed), _weights(full)):
        np.testing.assert_array_equal(a, b)
    for name in ("config.json", "report.json", "history.csv",
                 "checkpoints/best.weights.h5", "tensorboard"):
        assert os.path.exists(os.path.join(killed, name)), name
    report = _report(killed)
    assert report["epochs_done"] == 2
    # The resumed epoch's seconds cover only the steps run after the kill,
    # and the report says where this process started.
    assert [n for n, _ in _history(killed, timing=True)] == [8, 4]
    assert [n for n, _ in _history(full, timing=True)] == [8, 8]
    assert report["resumed_at"] == {"epoch": 1, "step": 4}
    assert _report(full)["resumed_at"] is None
    assert report["last"]["top1"] is not None
    assert report["best_top1"] >= report["last"]["top1"]


def test_restore_loads_a_finished_run_without_training(tmp_path,
                                                       teacher_path):
    import dataclasses

    from keras_semkd import training
    from tests.tiny import tiny_kd_recipe

    recipe = tiny_kd_recipe("restore", teacher_path, seed=5, batch_size=32,
                            images=64)
    run_dir = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no training state"):
        training.Runner(recipe, run_dir).restore()
    trained = training.Runner(recipe, run_dir)
    trained.run(verbose=0)
    want = [np.array(w) for w in trained.student.weights]
    history = list(trained.history)
    restored = training.Runner(recipe, run_dir)
    distiller = restored.restore()
    assert distiller.student is restored.student
    for a, b in zip(restored.student.weights, want):
        np.testing.assert_array_equal(np.array(a), b)
    assert restored.history == history
    # Nothing was trained or rewritten: the state is the one on disk.
    assert _report(run_dir)["epochs_done"] == 1
    other = dataclasses.replace(recipe, seed=6)
    with pytest.raises(training.ConfigMismatchError, match="seed"):
        training.Runner(other, run_dir).restore()


def test_nan_loss_stops_with_a_clear_message_and_keeps_good_state(
        tmp_path, teacher_path):
    run_dir = str(tmp_path / "nan")
    proc = _run([run_dir, teacher_path, 0, 1e12], check=False)
    assert proc.returncode != 0
    assert "NonFiniteLossError" in proc.stderr
    assert "non-finite" in proc.stderr
    # The loss blows up before the first state (step 3): the message says
    # there is none instead of naming a file that does not exist.
    assert "No training state had been saved yet" in proc.stderr
    assert not os.path.exists(os.path.join(run_dir, "state.npz"))


def test_classifier_view_trains_under_mixed_bfloat16():
    """The student-alone path under mixed_bfloat16: logits reach the loss
    and the top-5 metric as float32 (top-k rejects bfloat16)."""
    from keras_semkd import models, training

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        view = training.classifier_view(models.get("resnet8",
                                                   num_classes=10))
        assert view.output.dtype == "float32"
        view.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True),
            metrics=training._metrics(),
        )
        rng = np.random.default_rng(0)
        x = rng.random((16, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, 16)
        logs = view.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][-1]) and "top5" in logs
        assert view.layers[-2].compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
