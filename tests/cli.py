"""Runs an `experiments/` script's absl `main` in this process, exactly as
its command line would (same flag parsing, same `main`), so a test sees the
exception class it raises and pays no interpreter start-up per call.

    out = cli("train_teacher.py", "--model=resnet8", "--epochs=1")

The script's flags are removed again afterwards, so scripts defining the
same flag names can run one after the other; global state a run changes
(TF op determinism, the mixed-precision policy) is restored.
"""

import contextlib
import importlib.util
import io
import os

import keras
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _determinism():
    if keras.backend.backend() != "tensorflow":
        return None
    # Private, test-only: Runner enables op determinism process-wide.
    from tensorflow.python.framework import config

    return config


def cli(script, *args):
    """Runs `python experiments/<script> <args>` in-process.

    Returns:
        What the script printed to stdout.

    Raises:
        Whatever the script's `main` raises (not a `SystemExit`).
    """
    path = os.path.join(ROOT, "experiments", script)
    fv = flags.FLAGS
    before = set(fv)
    config = _determinism()
    deterministic = config.is_op_determinism_enabled() if config else None
    policy = keras.mixed_precision.global_policy().name
    name = "_cli_" + os.path.splitext(script)[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    out = io.StringIO()
    try:
        spec.loader.exec_module(module)
        argv = fv([path, *args])
        with contextlib.redirect_stdout(out):
            module.main(argv)
    finally:
        for flag in set(fv) - before:
            delattr(fv, flag)
        fv.unparse_flags()
        if config is not None and not deterministic:
            config.disable_op_determinism()
        keras.mixed_precision.set_global_policy(policy)
    return out.getvalue()


def snapshot(folder):
    """`{relative path: bytes}` of every file under `folder` (the lock
    file, which only names its holder, and TensorBoard logs excluded), to
    assert that a refused call wrote or changed nothing."""
    found = {}
    if not os.path.isdir(folder):
        return found
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "tensorboard"]
        for f in files:
            path = os.path.join(base, f)
            rel = os.path.relpath(path, folder)
            if rel == "run.lock":
                continue
            with open(path, "rb") as fh:
                found[rel] = fh.read()
    return found
