"""The bad-input battery of issue #11, through the public CLI (the scripts,
one process per call: `tests/cli.py`) and API, on tiny generated data.

Each case asserts what the input now gets -- the exact error class, raised
before training, and that nothing was written or changed; or the correct
result. `docs/reliability.md` tables the battery.
"""

import json
import multiprocessing
import os
import shutil
import signal
import time

import keras
import numpy as np
import pytest

from tests.cli import cli
from tests.cli import snapshot
from tests.data.conftest import write_png_folder

if keras.backend.backend() != "tensorflow":
    pytest.skip("the scripts and the export run on the TF backend",
                allow_module_level=True)

from absl import app  # noqa: E402

from keras_semkd import configs  # noqa: E402
from keras_semkd import data as kd_data  # noqa: E402
from keras_semkd import export  # noqa: E402
from keras_semkd import models  # noqa: E402
from keras_semkd import training  # noqa: E402
from keras_semkd.export import serving  # noqa: E402

CLASSES = ("apple", "bear", "cloud", "dog")
PER_CLASS = 6
SIZE = 16

# The battery: id -> (input, what it now gets). Read by docs/reliability.md.
BATTERY = {
    "limit_eval": "scores a stratified subset, reported as one",
    "missing_class": "ValueError naming the missing class, before training",
    "validation": "ValueError (no held-out data) or the run's carve-out",
    "cinic10_statistics": "ValueError: not CINIC-10",
    "export_image_folder": "exports with the run's classes and statistics",
    "wrong_statistics": "ExportMismatchError against training statistics",
    "evaluate_run_data": "evaluates on the run's recorded data",
    "nan": "NonFiniteLossError naming a finite state; --resume_from",
    "non_finite_state": "NonFiniteLossError, the state is never written",
    "two_writers": "RunDirectoryLockedError naming the holder",
    "other_config": "ConfigMismatchError listing the fields",
    "override_types": "ValueError naming field, type, value",
    "class_count": "ValueError naming both class counts (one line)",
    "stale_export": "temporaries of dead exports are removed",
    "image_size": "InvalidArgumentError from the serving graph",
    "changed_data": "DataMismatchError on resume",
}


def _train_teacher_args(run_dir, data_dir, *extra):
    return ("--model=resnet8", "--dataset=image_folder",
            f"--data_dir={data_dir}", "--epochs=1", "--batch_size=8",
            "--checkpoint_every=2", "--verbose=0", f"--run_dir={run_dir}",
            *extra)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A class-ordered image folder (train/ and test/, no valid/)."""
    root = tmp_path_factory.mktemp("data") / "imgs"
    return write_png_folder(root, CLASSES, PER_CLASS, size=SIZE,
                            splits=("train", "test"))


@pytest.fixture(scope="module")
def cli_run(folder, tmp_path_factory):
    """A run of train_teacher.py on the folder, scored on 8 test images."""
    run_dir = tmp_path_factory.mktemp("runs") / "cli"
    cli("train_teacher.py", *_train_teacher_args(run_dir, folder,
                                                 "--limit_eval=8"))
    return run_dir


@pytest.fixture(scope="module")
def carved_run(folder, tmp_path_factory):
    """An API run with a carved validation split (split_seed 1 != seed 2)
    and its data_dir given to the Runner only (not in the recipe)."""
    run_dir = tmp_path_factory.mktemp("runs") / "carved"
    recipe = configs.Recipe(
        name="carved", student="resnet8", epochs=1, num_classes=4, seed=2,
        optimizer=configs.OptimizerConfig(milestones=()),
        data=configs.DataConfig(dataset="image_folder", batch_size=4,
                                validation_split=0.5, split_seed=1))
    report = training.Runner(recipe, str(run_dir), data_dir=str(folder)).run(
        verbose=0)
    return run_dir, report


def _synthetic_recipe(**changes):
    recipe = configs.Recipe(
        name="syn", student="resnet8", epochs=2, num_classes=10,
        optimizer=configs.OptimizerConfig(milestones=()),
        data=configs.DataConfig(dataset="synthetic", batch_size=16,
                                limit_train=48, limit_eval=32,
                                augment=False))
    return recipe.override(**changes) if changes else recipe


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """Random resnet8 weights for 10 and for 100 classes."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for n in (10, 100):
        keras.utils.set_random_seed(0)
        paths[n] = str(folder / f"resnet8_{n}.weights.h5")
        models.get("resnet8", num_classes=n).save_weights(paths[n])
    return paths


def _student(run_dir, record):
    model = models.get("resnet8", num_classes=record["num_classes"],
                       input_shape=tuple(record["input_shape"]))
    model.load_weights(os.path.join(run_dir, "checkpoints",
                                    "last.weights.h5"))
    return model


def _finite(npz_path):
    with np.load(npz_path) as z:
        return all(np.all(np.isfinite(z[k])) for k in z.files
                   if z[k].dtype.kind == "f")


# ---------------------------------------------------------------------------
# 1. limit_eval
# ---------------------------------------------------------------------------
def test_limit_eval_scores_a_stratified_subset_reported_as_such(cli_run,
                                                                folder):
    report = json.loads((cli_run / "report.json").read_text())
    assert report["eval"]["is_subset"] is True
    assert (report["eval"]["num_examples"],
            report["eval"]["split_num_examples"]) == (8, 24)
    assert "stratified subset of 8 of 24" in report["eval"]["description"]
    record = training.read_run_data(str(cli_run))
    images, labels, _ = kd_data.load_split(
        "image_folder", "test", data_dir=folder, max_examples=8)
    # Every class is in the subset (the first 8 images are 2 classes).
    np.testing.assert_array_equal(np.bincount(labels), [2, 2, 2, 2])
    # The reported number is the accuracy on exactly those images.
    x = training.run_normalization(record).apply_numpy(images)
    logits = _student(cli_run, record)(x, training=False)["logits"]
    top1 = float(np.mean(np.argmax(np.asarray(logits), -1) == labels))
    assert report["last"]["top1"] == pytest.approx(top1, abs=1e-6)


# ---------------------------------------------------------------------------
# 2. a test split missing a class folder
# ---------------------------------------------------------------------------
def test_test_split_missing_a_class_is_refused_before_training(
        folder, cli_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    shutil.rmtree(bad / "test" / "bear")
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"missing \['bear'\]"):
        cli("train_teacher.py", *_train_teacher_args(run_dir, bad))
    assert snapshot(run_dir) == {}
    # Evaluating a good run on it is refused the same way.
    before = snapshot(cli_run)
    with pytest.raises(ValueError, match=r"missing \['bear'\]"):
        cli("evaluate.py", f"--run_dir={cli_run}", f"--data_dir={bad}")
    assert snapshot(cli_run) == before


# ---------------------------------------------------------------------------
# 3. "validation" is only ever held-out data
# ---------------------------------------------------------------------------
def test_validation_without_held_out_data_is_refused(cli_run):
    before = snapshot(cli_run)
    # The run trained on all of train and the folder has no valid/: no
    # validation data exists (a slice of train is not one).
    with pytest.raises(FileNotFoundError, match="held out from training"):
        cli("evaluate.py", f"--run_dir={cli_run}", "--split=validation")
    assert snapshot(cli_run) == before
    # A dataset without a validation split of its own: refused up front.
    record = training.read_run_data(str(cli_run))
    with pytest.raises(ValueError, match="no held-out validation data"):
        training.held_out_split_args(dict(record, dataset="cifar100"),
                                     "validation")


def test_validation_of_a_carved_run_is_its_carve_out(carved_run, tmp_path):
    run_dir, report = carved_run
    assert report["eval"]["carved_from_train"] is True
    assert "held out from training" in report["eval"]["description"]
    cli("evaluate.py", f"--run_dir={run_dir}", "--split=validation",
        "--checkpoint=last", f"--output_dir={tmp_path}")
    result = json.loads((tmp_path / "evaluation_validation.json").read_text())
    assert result["images"]["carved_from_train"] is True
    assert result["images"]["split_seed"] == 1
    assert result["num_examples"] == report["eval"]["num_examples"] == 12
    # The same images the run was scored on: the same top-1.
    assert result["top1"] == pytest.approx(report["last"]["top1"], abs=1e-6)


# ---------------------------------------------------------------------------
# 4. statistics and class names follow the run into export
# ---------------------------------------------------------------------------
def test_cinic10_on_a_folder_that_is_not_cinic10_is_refused(tmp_path):
    root = write_png_folder(tmp_path / "cifar10", kd_data.CINIC10_CLASSES, 2,
                            size=SIZE, splits=("train", "test"))
    run_dir = tmp_path / "run"
    args = list(_train_teacher_args(run_dir, root))
    args[1] = "--dataset=cinic10"
    with pytest.raises(ValueError, match="does not hold CINIC-10"):
        cli("train_teacher.py", *args)
    assert snapshot(run_dir) == {}


def test_image_folder_run_exports_with_its_classes_and_statistics(
        cli_run, tmp_path):
    record = training.read_run_data(str(cli_run))
    assert record["class_names"] == list(CLASSES)
    assert record["normalization"]["source"].startswith("computed from")
    out = cli("export.py", f"--run_dir={cli_run}",
              f"--export_root={tmp_path}", "--name=m", "--top_k=2")
    assert "reload max abs diff" in out
    meta = export.read_metadata(tmp_path / "m" / "1")
    assert meta["class_names"] == list(CLASSES)
    assert meta["normalization"]["mean"] == record["normalization"]["mean"]
    assert meta["normalization"]["std"] == record["normalization"]["std"]
    assert meta["signature"]["inputs"]["images"]["shape"] == \
        [None, SIZE, SIZE, 3]
    # --dataset=cinic10 (the old workaround) is refused: nothing exported.
    with pytest.raises(app.UsageError, match="Drop --dataset"):
        cli("export.py", f"--run_dir={cli_run}", "--dataset=cinic10",
            f"--export_root={tmp_path}", "--name=w")
    assert not (tmp_path / "w").exists()


def test_reload_check_compares_against_the_training_statistics(
        cli_run, tmp_path):
    record = training.read_run_data(str(cli_run))
    student = _student(cli_run, record)
    wrong = export.export_student(student, tmp_path, "wrong",
                                  dataset="cinic10", top_k=2,
                                  class_names=list(CLASSES))
    images = kd_data.load_split("image_folder", "test",
                                data_dir=record["data_dir"])[0]
    # Against its own (wrong) statistics the export agrees with itself ...
    assert export.reload_check(wrong.path, student, images) <= 1e-5
    # ... against the statistics the model was trained under it does not.
    with pytest.raises(export.ExportMismatchError, match="trained under"):
        export.reload_check(wrong.path, student, images,
                            normalization=training.run_normalization(record))


# ---------------------------------------------------------------------------
# 5. evaluate --run_dir uses the run's recorded data
# ---------------------------------------------------------------------------
def test_evaluate_uses_the_runs_recorded_data_dir(carved_run, folder,
                                                  tmp_path):
    run_dir, _ = carved_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["data_dir"] is None  # given to the Runner only
    cli("evaluate.py", f"--run_dir={run_dir}", f"--output_dir={tmp_path}")
    result = json.loads((tmp_path / "evaluation_test.json").read_text())
    assert result["dataset"] == "image_folder"
    assert result["data_dir"] == str(folder)
    assert result["num_examples"] == len(CLASSES) * PER_CLASS
    record = training.read_run_data(str(run_dir))
    assert result["normalization"]["mean"] == \
        record["normalization"]["mean"]


# ---------------------------------------------------------------------------
# 6. NaN: a finite last good state, and a way to continue it
# ---------------------------------------------------------------------------
def test_nan_leaves_a_finite_good_state_and_resume_from_continues_it(
        tmp_path, teacher_weights):
    base = ("--method=kd", "--teacher=resnet8", "--student=resnet8",
            "--dataset=synthetic", "--batch_size=16", "--limit_train=48",
            "--limit_eval=32", "--epochs=2", "--checkpoint_every=1",
            "--verbose=0", f"--teacher_weights={teacher_weights[10]}",
            "--override=optimizer.milestones=[1]")
    first = tmp_path / "first"
    # From epoch 2 the learning rate is 0.05 * 1e30: the loss blows up.
    with pytest.raises(training.NonFiniteLossError) as err:
        cli("distill.py", *base, "--override=optimizer.decay_rate=1e30",
            f"--run_dir={first}")
    message = str(err.value)
    assert "became non-finite at epoch 2, step 3" in message
    assert "Last good state (checked finite): epoch 2, step 2" in message
    assert "end of epoch 1 is kept in " + str(first / "epoch_state.json") \
        in message
    assert "--resume_from" in message
    for name in ("state.npz", "epoch_state.npz"):
        assert _finite(first / name), name
    kept = snapshot(first)
    # The same directory with a lower learning rate: refused, by field.
    with pytest.raises(training.ConfigMismatchError,
                       match=r"optimizer\.decay_rate: recorded 1e\+30, "
                             r"given 0\.1") as err:
        cli("distill.py", *base, "--override=optimizer.decay_rate=0.1",
            f"--run_dir={first}")
    assert "resume_from" in str(err.value)
    assert snapshot(first) == kept
    # The documented way: continue a state in a new run directory.
    second = tmp_path / "second"
    cli("distill.py", *base, "--override=optimizer.decay_rate=0.1",
        f"--run_dir={second}",
        f"--resume_from={first / 'epoch_state.json'}")
    report = json.loads((second / "report.json").read_text())
    assert report["resumed_from"]["run_dir"] == str(first)
    assert (report["resumed_from"]["epoch"],
            report["resumed_from"]["step"]) == (1, 0)
    assert report["resumed_from"]["changed"] == {
        "optimizer.decay_rate": [1e30, 0.1]}
    assert report["epochs_done"] == 2
    assert len(report["history"]) == 2  # epoch 1 carried over
    assert np.isfinite(report["history"][-1]["loss"])
    assert _finite(second / "state.npz")
    assert snapshot(first) == kept
    # A field that defines the run cannot change when resuming.
    with pytest.raises(training.ConfigMismatchError, match="seed"):
        cli("distill.py", *base, "--override=optimizer.decay_rate=0.1",
            "--seed=5", f"--run_dir={tmp_path / 'third'}",
            f"--resume_from={first}")
    assert snapshot(tmp_path / "third") == {}


class _PoisonMovingMean(keras.callbacks.Callback):
    """Puts an inf into a batch-norm moving mean after training step 1:
    the training loss stays finite (training uses batch statistics) but
    the state does not -- a finite loss with a non-finite state."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            v = next(w for w in self.model.weights
                     if "moving_mean" in w.path)
            v.assign(np.full(v.shape, np.inf, "float32"))


def test_a_non_finite_state_is_never_written(tmp_path):
    run_dir = tmp_path / "poison"
    runner = training.Runner(_synthetic_recipe(epochs=1), str(run_dir),
                             checkpoint_every=1)
    with pytest.raises(training.NonFiniteLossError,
                       match=r"state: 1 non-finite array\(s\): .*moving_mean"
                       ) as err:
        runner.run(verbose=0, callbacks=[_PoisonMovingMean()])
    assert "epoch 1, step 1" in str(err.value)
    meta = json.loads((run_dir / "state.json").read_text())
    assert (meta["epoch"], meta["step"]) == (0, 1)
    assert _finite(run_dir / "state.npz")
    assert not (run_dir / "checkpoints" / "last.weights.h5").exists()


# ---------------------------------------------------------------------------
# 7. one writer per run directory; run identity
# ---------------------------------------------------------------------------
def _hold_lock(run_dir, ready):
    lock = training.RunLock(run_dir)
    lock.acquire()
    ready.set()
    time.sleep(600)


def test_a_second_writer_is_refused_naming_the_holder(cli_run, folder):
    before = snapshot(cli_run)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(cli_run), ready))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(training.RunDirectoryLockedError,
                           match=f"pid {holder.pid} on "):
            cli("train_teacher.py", *_train_teacher_args(
                cli_run, folder, "--limit_eval=8", "--seed=4"))
        # The API: the same refusal at construction.
        with pytest.raises(training.RunDirectoryLockedError,
                           match=f"pid {holder.pid}"):
            training.Runner(_synthetic_recipe(), str(cli_run))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert snapshot(cli_run) == before
    # The kernel dropped the killed holder's lock: the directory is free.
    training.RunLock(str(cli_run)).probe()


def test_a_run_of_another_config_is_refused_listing_the_fields(cli_run,
                                                               folder):
    before = snapshot(cli_run)
    with pytest.raises(training.ConfigMismatchError,
                       match=r"seed: recorded 0, given 4") as err:
        cli("train_teacher.py", *_train_teacher_args(
            cli_run, folder, "--limit_eval=8", "--seed=4", "--epochs=2"))
    assert "epochs: recorded 1, given 2" in str(err.value)
    assert "2 field(s) differ" in str(err.value)
    assert snapshot(cli_run) == before


def test_resuming_on_changed_data_is_refused(folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    recipe = configs.Recipe(
        name="changing", student="resnet8", epochs=1, num_classes=4,
        optimizer=configs.OptimizerConfig(milestones=()),
        data=configs.DataConfig(dataset="image_folder", batch_size=8,
                                data_dir=str(data)))
    run_dir = tmp_path / "run"
    training.Runner(recipe, str(run_dir)).run(verbose=0)
    before = snapshot(run_dir)
    write_png_folder(data / "train", ("apple",), 3, seed=5, size=SIZE,
                     splits=("",))
    with pytest.raises(training.DataMismatchError,
                       match=r"train\.num_examples: recorded 24, now 27"):
        training.Runner(recipe, str(run_dir)).run(verbose=0)
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------
# 8. the smaller ones
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=\"fast\"",
     r"OptimizerConfig\.learning_rate must be a number\. Received: "
     r"learning_rate='fast' \(str\)"),
    ("epochs=1.5", r"Recipe\.epochs must be an integer\. Received: "
                   r"epochs=1\.5 \(float\)"),
    ("data.augment=\"no\"", r"DataConfig\.augment must be a boolean"),
    ("data.limit_eval=0", r"DataConfig\.limit_eval must be >= 1"),
])
def test_overrides_of_the_wrong_type_name_field_type_and_value(
        override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        cli("distill.py", "--dataset=synthetic", f"--override={override}",
            f"--output_dir={tmp_path}")
    assert os.listdir(tmp_path) == []


def test_teacher_of_another_class_count_is_one_line_naming_both(
        tmp_path, teacher_weights):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        cli("distill.py", "--method=kd", "--teacher=resnet8",
            "--student=resnet8", "--dataset=synthetic", "--verbose=0",
            f"--teacher_weights={teacher_weights[100]}", "--epochs=1",
            f"--run_dir={run_dir}")
    message = str(err.value)
    assert "\n" not in message
    assert "teacher classes=100, num_classes=10" in message
    assert snapshot(run_dir) == {}
    # The API, with a built teacher: the same one line.
    with pytest.raises(ValueError, match="has 100 logits but the recipe has "
                                         "num_classes=10"):
        from keras_semkd.distillers import build

        build.build_distiller(
            configs.make_recipe("resnet8", "resnet8", "kd", num_classes=10),
            teacher=models.get("resnet8", num_classes=100))


def _die_holding_a_temporary(model_dir, ready):
    serving._new_temporary(model_dir)
    ready.set()
    time.sleep(600)


def test_temporaries_of_killed_exports_are_cleaned(cli_run, tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    ctx = multiprocessing.get_context("fork")
    procs = []
    for _ in range(2):
        ready = ctx.Event()
        proc = ctx.Process(target=_die_holding_a_temporary,
                           args=(str(model_dir), ready))
        proc.start()
        assert ready.wait(60)
        procs.append(proc)
    dead, alive = procs
    os.kill(dead.pid, signal.SIGKILL)  # an export killed mid-way
    dead.join()
    temporaries = sorted(os.listdir(model_dir))
    assert len(temporaries) == 2 and all(
        t.startswith(".tmp-export-") for t in temporaries)
    try:
        cli("export.py", f"--run_dir={cli_run}", f"--export_root={tmp_path}",
            "--name=m", "--top_k=2")
        left = [e for e in os.listdir(model_dir)
                if e.startswith(".tmp-export-")]
        # The dead export's temporary is gone; the live one's is kept.
        assert len(left) == 1 and left[0] in temporaries
    finally:
        os.kill(alive.pid, signal.SIGKILL)
        alive.join()
    assert export.clean_stale_temporaries(model_dir) == [
        str(model_dir / left[0])]
    assert sorted(os.listdir(model_dir)) == ["1", "student-1.keras"]


def test_serving_refuses_images_of_another_size(cli_run, tmp_path):
    import tensorflow as tf

    cli("export.py", f"--run_dir={cli_run}", f"--export_root={tmp_path}",
        "--name=m", "--top_k=2")
    signature = tf.saved_model.load(str(tmp_path / "m" / "1")).signatures[
        export.SIGNATURE_NAME]
    ok = signature(images=tf.zeros((2, SIZE, SIZE, 3), tf.uint8))
    assert ok["probabilities"].shape == (2, len(CLASSES))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"\[2,64,64,3\].*\[\?,16,16,3\]"):
        signature(images=tf.zeros((2, 64, 64, 3), tf.uint8))


def test_checkpoint_every_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every=0"):
        training.Runner(_synthetic_recipe(), str(tmp_path / "r"),
                        checkpoint_every=0)
    assert not (tmp_path / "r").exists()


def test_the_battery_is_documented():
    doc = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs",
                       "reliability.md")
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    for case in BATTERY:
        assert f"`{case}`" in text, case
