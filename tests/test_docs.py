"""The tutorials run as written: every ```python block of a page, in order,
in one namespace, in a fresh folder."""

import os
import re

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page):
    with open(os.path.join(ROOT, "docs", page), encoding="utf-8") as f:
        return BLOCK.findall(f.read())


def test_blocks_are_found():
    assert len(python_blocks("own_models.md")) >= 8


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the tutorial exports a TF SavedModel")
def test_own_models_tutorial_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__tutorial__"}
    for i, code in enumerate(python_blocks("own_models.md")):
        try:
            exec(compile(code, f"own_models.md[block {i + 1}]", "exec"),
                 namespace)
        except Exception as e:  # noqa: BLE001 - re-raised with the block
            raise AssertionError(
                f"block {i + 1} of docs/own_models.md failed:\n{code}"
            ) from e
    out = capsys.readouterr().out
    assert "student top-1" in out and "max |served - keras|" in out
    # What the page promises: auto taps at the stage boundaries, logits
    # before the teacher's softmax, a plain-Keras student file, an export.
    distiller = namespace["distiller"]
    assert distiller.features["teacher"]["stage3"] == "block_6_expand_relu"
    assert "without its softmax" in distiller._views["teacher"].logits
    assert namespace["info"].input_shape == (32, 32, 3)
    assert os.path.isfile(tmp_path / "my_student.keras")
    assert os.path.isfile(tmp_path / "exported" / "models.config")
    assert 0.0 <= namespace["report"]["top1"] <= 1.0
