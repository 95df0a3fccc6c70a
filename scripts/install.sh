#!/usr/bin/env bash
# Installs keras_semkd and what its tests need on a fresh CPU machine.
# TensorFlow: the CPU wheel (tensorflow-cpu) unless a TensorFlow
# distribution is already installed; setup.py then requires that one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import tensorflow" >/dev/null 2>&1; then
  $PY -m pip install -q "tensorflow-cpu==2.21.0"
fi
$PY -m pip install -q setuptools wheel
# --no-build-isolation: setup.py sees the installed TensorFlow distribution.
$PY -m pip install -q --no-build-isolation -e ".[test,jax]"
# Serving protos for the export tests; --no-deps or it pulls the 570 MB
# tensorflow wheel.
$PY -m pip install -q --no-deps "tensorflow-serving-api==2.21.0"
$PY - <<'PY'
import importlib.metadata as m
for d in ("tensorflow-cpu", "keras", "jax", "tensorflow-datasets",
          "keras-tuner", "tensorboard"):
    try:
        print(f"{d} {m.version(d)}")
    except m.PackageNotFoundError:
        print(f"{d} (not installed)")
PY
