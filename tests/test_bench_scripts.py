"""Every benchmark and experiment script compiles (a broken import line in
benchmarks/bench_input.py went unnoticed for days), and the epoch-stall
counter of benchmarks/epoch_stalls.py finds the autotune marks."""

import glob
import importlib.util
import os
import py_compile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "**", "*.py"),
                           recursive=True)
                 + glob.glob(os.path.join(ROOT, "experiments", "*.py")))


@pytest.mark.parametrize("path", SCRIPTS,
                         ids=[os.path.relpath(p, ROOT) for p in SCRIPTS])
def test_script_compiles(path, tmp_path):
    py_compile.compile(path, cfile=str(tmp_path / "x.pyc"), doraise=True)


def _load_epoch_stalls():
    # Loaded from its file: tests never import the scripts as packages.
    spec = importlib.util.spec_from_file_location(
        "epoch_stalls", os.path.join(ROOT, "benchmarks", "epoch_stalls.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_epoch_stalls_marks_and_keras_times(tmp_path):
    es = _load_epoch_stalls()

    assert [round(m, 2) for m in es.marks(210)] == [
        20.47, 40.95, 81.91, 141.91, 201.91]
    assert es.on_mark(142.1, 0.15, 0.5) and es.on_mark(82.2, 0.15, 0.5)
    assert not es.on_mark(120.0, 0.15, 0.5)
    assert not es.on_mark(141.9, 0.15, 0.5)
    assert 0.0 < es.chance(140.0, 0.5) < 0.05
    record = {"protocol": "sakd_followup", "pair": "mbv2-r8",
              "arm": "sakd_ce1", "seed": 0, "steps_per_epoch": 703,
              "epoch_s": [141.4, 142.1, 90.9]}
    log = tmp_path / "followup_mbv2-r8_sakd_ce1_0.txt"
    # The branch prefit's progress line must not count as an epoch.
    log.write_text("1000/1000 - 27s - loss: 1.0\n"
                   "703/703 - 101s - loss: 2.0\n"
                   "703/703 - 113s - loss: 2.0\n"
                   "703/703 - 90s - loss: 2.0\n")
    assert es.keras_epoch_seconds(record, str(tmp_path)) == [101, 113, 90]
    short = dict(record, epoch_s=[1.0, 2.0])  # a resumed run's log
    assert es.keras_epoch_seconds(short, str(tmp_path)) is None
    assert es.keras_epoch_seconds(dict(record, seed=1), str(tmp_path)) is None
