"""Runs an `experiments/` script as its command line would, in a fresh
Python process (tests never import `experiments/`), and raises again, in
the test, the exception its `main` ended with, so a test still sees the
exception class and message it raised:

    out = cli("train_teacher.py", "--model=resnet8", "--epochs=1")

A fresh process also leaves this one's global state (TF op determinism,
the mixed-precision policy, absl flags) untouched.
"""

import builtins
import importlib
import os
import re
import subprocess
import sys

from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The last line of a Python traceback: `package.module.ErrorClass: message`
# (builtins unqualified).
_TRACEBACK = "Traceback (most recent call last):\n"
_RAISED = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*): ?(?P<msg>.*)", re.S)


class ScriptError(RuntimeError):
    """A script failed without a traceback naming an importable class."""


def _exception_class(qualified):
    module, _, name = qualified.rpartition(".")
    if not module:
        found = getattr(builtins, name, None)
    else:
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            found = None
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None


def _raised(stderr):
    """The exception a failed script's stderr reports, rebuilt."""
    if _TRACEBACK in stderr:
        tail = stderr.rsplit(_TRACEBACK, 1)[1]
        lines = tail.split("\n")
        # Frames are indented; the first line that is not ends them.
        for i, line in enumerate(lines):
            if line and not line.startswith(" "):
                match = _RAISED.match("\n".join(lines[i:]).rstrip("\n"))
                cls = match and _exception_class(match.group("cls"))
                if cls is not None:
                    return cls(match.group("msg"))
                break
    else:
        # absl's `app.run` prints a `UsageError` after the usage text.
        lines = [line for line in stderr.strip().split("\n") if line]
        if lines:
            return app.UsageError(lines[-1])
    return ScriptError(stderr[-3000:])


def cli(script, *args):
    """Runs `python experiments/<script> <args>` in a subprocess.

    Returns:
        What the script printed to stdout.

    Raises:
        The exception the script's `main` raised (rebuilt from the class
        and message of its traceback; `app.UsageError` for a usage error).
    """
    path = os.path.join(ROOT, "experiments", script)
    pythonpath = os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=pythonpath,
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL",
                                                   "3"))
    proc = subprocess.run([sys.executable, path, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise _raised(proc.stderr)
    return proc.stdout


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
