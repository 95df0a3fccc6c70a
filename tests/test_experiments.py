"""The README's main job and the scripts around it, end to end, on
generated data (no CIFAR copy visible), as a new user would run them."""

import json
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the scripts run on the default TF backend",
)


def _script(name, *args, env_extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               KERAS_BACKEND="tensorflow", **(env_extra or {}))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", name), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_main_job_uses_the_shipped_teacher_on_cifar100(tmp_path):
    from keras_semkd import data as data_lib

    if data_lib.default_cifar100_dir() is None:
        pytest.skip("no local CIFAR-100 copy (../shared/data)")
    out = _script("distill.py", "--verbose=0", "--limit_train=128",
                  "--limit_eval=128", f"--output_dir={tmp_path}")
    shipped = os.path.join("weights", "cpu_protocol",
                           "resnet20_cifar100.weights.h5")
    assert "shipped weights" in out and shipped in out
    run_dir = tmp_path / "cpu_smoke"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["teacher_weights"].endswith(shipped)
    # No quick teacher was trained.
    assert not (run_dir / "teacher").exists()
    assert not (run_dir / "teacher.weights.h5").exists()
    # The gain is shown: the same student alone, same budget, side by side.
    comparison = json.loads((run_dir / "comparison.json").read_text())
    kinds = [r["training"] for r in comparison["rows"]]
    assert kinds == ["teacher (shipped weights)", "student alone",
                     "distilled (kd)"]
    alone = json.loads((run_dir / "student_alone" / "config.json")
                       .read_text())
    assert alone["teacher"] is None and alone["terms"] == []
    for key in ("epochs", "optimizer", "data", "seed"):
        assert alone[key] == config[key], key
    assert "| resnet8 | student alone |" in out
    assert "distillation gain:" in out
    assert (run_dir / "comparison.md").read_text().strip() in out


def test_main_job_falls_back_to_generated_data_then_evaluates(tmp_path):
    env = {"KERAS_SEMKD_DATA": str(tmp_path / "no-data-here")}
    out = _script("distill.py", "--verbose=0", "--teacher_epochs=1",
                  "--epochs=1", f"--output_dir={tmp_path}", env_extra=env)
    assert "GENERATED data, not CIFAR-100" in out
    run_dir = tmp_path / "cpu_smoke"
    for name in ("config.json", "history.csv", "report.json", "curves.png",
                 "student.keras", "teacher.weights.h5",
                 "checkpoints/best.weights.h5", "comparison.json",
                 "comparison.md", "student_alone/report.json"):
        assert (run_dir / name).exists(), name
    rows = json.loads((run_dir / "comparison.json").read_text())["rows"]
    assert rows[0]["training"] == "teacher (quick, 1 epoch(s))"
    assert "GENERATED data" in (run_dir / "comparison.md").read_text()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"]["is_generated"] is True
    assert report["recipe"]["data"]["dataset"] == "synthetic"
    assert 0.0 <= report["last"]["top1"] <= 1.0
    out = _script("evaluate.py", f"--run_dir={run_dir}", env_extra=env)
    assert "top-1" in out
    evaluation = json.loads((run_dir / "evaluation_test.json").read_text())
    assert evaluation["is_generated"] is True
    assert len(evaluation["per_class"]) == 10
    assert (run_dir / "confusion_test.png").exists()


def test_sakd_gradients_measures_a_saved_run(tmp_path):
    """`sakd_gradients.py --run_dirs` reads a run's config and saved state
    and reports every term's gradient without training it."""
    from keras_semkd import models
    from keras_semkd import training
    from tests.tiny import tiny_kd_recipe

    keras.utils.set_random_seed(0)
    teacher = str(tmp_path / "t.weights.h5")
    models.get("resnet8", num_classes=10).save_weights(teacher)
    recipe = tiny_kd_recipe("grad", teacher, seed=4)
    run_dir = tmp_path / "kd" / "seed4"
    training.Runner(recipe, str(run_dir)).run(verbose=0)
    state = (run_dir / "state.npz").read_bytes()
    output = tmp_path / "grads.json"
    out = _script("sakd_gradients.py", f"--run_dirs={run_dir}",
                  "--batches=2", f"--output={output}", "--pair=r20-r8")
    assert "r20-r8 / kd / end of run, seed 4" in out
    rows = json.loads(output.read_text())["kd"]["end of run, seed 4"]
    assert set(rows) == {"kd", "student_loss"}
    assert rows["kd"]["cos_ref"] == pytest.approx(1.0)
    assert rows["student_loss"]["cos_student_loss"] == pytest.approx(1.0)
    assert rows["kd"]["norm"] > 0
    assert (run_dir / "state.npz").read_bytes() == state  # not trained
