"""`benchmarks/bench_batch_norm.py` in its smallest size."""

import json
import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the fused kernel is TensorFlow's")
@pytest.mark.slow  # a benchmark harness, not library behaviour
def test_bench_batch_norm_smallest_run(tmp_path):
    out = tmp_path / "bn.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks",
                                      "bench_batch_norm.py"),
         "--pairs=resnet8:resnet8", "--steps=1", "--repeats=1",
         "--batch_size=8", f"--out={out}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| resnet8:resnet8 | KD distill step |" in proc.stdout
    result = json.loads(out.read_text())["pairs"]["resnet8:resnet8"]
    for kind in ("kd", "student"):
        assert result[f"{kind}_ratio_fused_over_keras"] > 0
        assert result[f"{kind}_fused_bn"]["median"] > 0
