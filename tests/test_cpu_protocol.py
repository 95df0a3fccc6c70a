"""`experiments/cpu_protocol.py`: the CPU accuracy protocol end to end in
its smoke size (one short epoch per run) on the real CIFAR-100 copy."""

import json
import os
import subprocess
import sys

import keras
import pytest

from keras_semkd import data as data_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "cpu_protocol.py")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the scripts run on the default TF backend",
)


def _run(*args, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=900)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def test_unknown_variant_fails_before_any_training(tmp_path):
    proc = _run("--variants=kd,nope", f"--output_dir={tmp_path / 'p'}",
                check=False)
    assert proc.returncode != 0
    assert "Unknown CPU-protocol variant 'nope'" in proc.stderr
    # Nothing was trained: no teacher run, no run directories.
    assert not os.path.exists(tmp_path / "p" / "teacher")
    assert not os.path.exists(tmp_path / "p" / "kd")


@pytest.mark.slow  # ~75 s idle, 145 s loaded: the benchmark's own smoke run
def test_smoke_protocol_trains_reports_and_resumes(tmp_path):
    if data_lib.default_cifar100_dir() is None:
        pytest.skip("no local CIFAR-100 copy (../shared/data)")
    out = tmp_path / "proto"
    args = ["--smoke", "--variants=student,kd", "--seeds=0,1",
            "--workers=2", f"--output_dir={out}"]
    first = _run(*args).stdout
    smoke = tmp_path / "proto-smoke"
    assert "4 runs to do" in first
    # The smoke teacher was trained with its recipe and used by KD.
    assert (smoke / "teacher.weights.h5").exists()
    cfg = json.loads((smoke / "kd" / "seed1" / "config.json").read_text())
    assert cfg["name"] == "cpu_protocol-kd" and cfg["seed"] == 1
    assert cfg["teacher"] == "resnet20" and cfg["student"] == "resnet8"
    summary = json.loads((smoke / "summary.json").read_text())
    assert set(summary["runs"]) == {"student", "kd"}
    for variant in ("student", "kd"):
        tops = summary["runs"][variant]["top1_last"]
        assert len(tops) == 2 and all(0.0 <= t <= 100.0 for t in tops)
    table = (smoke / "results.md").read_text()
    assert "| student | 2 |" in table and "| kd | 2 |" in table
    assert (smoke / "cpu_protocol_top1.png").stat().st_size > 1000
    assert (smoke / "cpu_protocol_curves.png").stat().st_size > 1000
    log = (smoke / "progress.log").read_text()
    assert log.count("done   ") == 4 and "ETA" in log
    # Re-running skips finished runs and reports the same numbers.
    second = _run(*args).stdout
    assert "0 runs to do" in second and "4 already finished" in second
    again = json.loads((smoke / "summary.json").read_text())
    assert again["runs"] == summary["runs"]
