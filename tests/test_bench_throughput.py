"""The throughput benchmark's PyTorch reference and its smallest run.

The reference is RepDistiller's CIFAR ResNet in PyTorch
(`benchmarks/torch_reference.py`, needs `torch`, the `bench` extra); the
benchmark (`benchmarks/bench_throughput.py`) is run as a subprocess on the
cheapest pair with a single Keras peer.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_semkd import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def _torch_reference():
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location(
        "torch_reference", os.path.join(BENCHMARKS, "torch_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["resnet8x4", "resnet20"])
def test_torch_reference_has_our_parameter_counts(name):
    reference = _torch_reference()
    ours = models.get(name, num_classes=100)
    trainable = sum(int(np.prod(w.shape)) for w in ours.trainable_weights)
    params, with_running_stats = reference.count_parameters(
        reference.get(name, num_classes=100))
    assert params == trainable
    assert with_running_stats == ours.count_params()


def test_torch_reference_distill_step_runs():
    reference = _torch_reference()
    import torch

    torch.manual_seed(0)
    trainer = reference.KDTrainer(reference.get("resnet8", 10),
                                  reference.get("resnet8", 10))
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    loss, top1, top5 = trainer.distill_step(x, y)
    assert np.isfinite(loss) and 0 <= top1 <= 100 and 0 <= top5 <= 100
    assert trainer.teacher_inference(x).shape == (4, 10)
    assert not trainer.teacher.training and trainer.student.training


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the script runs on the default TF backend")
@pytest.mark.slow  # a benchmark harness, not library behaviour
def test_script_smallest_run_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
               KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "bench_throughput.py"),
         "--steps=2", "--warmup=1", "--repeats=1",
         "--pairs=resnet56:resnet20", "--peers=keras_kd", f"--out={out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    peer = result["pairs"]["resnet56:resnet20"]["peers"]["keras_kd"]
    assert len(peer["img_per_s"]) == 1
    assert peer["median_img_per_s"] > 0
    assert result["config"]["steps"] == 2
    assert "resnet56:resnet20" in proc.stdout


def test_plot_from_saved_results(tmp_path):
    """`--plot_from` draws earlier result JSONs without timing anything."""
    stats = {"median_img_per_s": 50.0, "median_img_per_cpu_s": 25.0}
    payload = {"date": "2026-11-25T00:00:00+00:00", "pairs": {
        "resnet20:resnet8": {
            "peers": {"keras_kd": stats, "torch_kd": dict(stats)},
            "mixed_precision": {"peers": {
                "keras_kd": stats, "keras_kd@mixed_bfloat16": stats}},
        }}}
    src = tmp_path / "r.json"
    src.write_text(json.dumps(payload))
    png = tmp_path / "plot.png"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "bench_throughput.py"),
         f"--plot_from={src}", f"--plot={png}"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.stat().st_size > 5000
    bad = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "bench_throughput.py"),
         f"--plot_from={src}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--plot_from needs --plot" in bad.stderr
