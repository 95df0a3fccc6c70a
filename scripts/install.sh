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
# keras-hub, for the test distilling a keras-hub image classifier. --no-deps:
# its tensorflow-text requirement pulls the full tensorflow wheel, and image
# models need only these two of its other requirements at import time.
$PY -m pip install -q --no-deps "keras-hub==0.32.0" "tokenizers==0.23.3" \
  "sentencepiece==0.2.3"
$PY - <<'PY'
import importlib.metadata as m
for d in ("tensorflow-cpu", "keras", "jax", "tensorflow-datasets",
          "keras-tuner", "tensorboard", "keras-hub"):
    try:
        print(f"{d} {m.version(d)}")
    except m.PackageNotFoundError:
        print(f"{d} (not installed)")
PY
