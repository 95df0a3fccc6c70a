"""Evaluation metrics, plots and tables."""

import os

import numpy as np
import pytest

from keras_semkd import distribute
from keras_semkd import evaluation
from keras_semkd import plotting


def test_classification_report_by_hand():
    logits = np.array([
        [3.0, 1.0, 2.0],   # true 0, pred 0
        [1.0, 3.0, 2.0],   # true 0, pred 1 (0 is 3rd)
        [0.0, 1.0, 2.0],   # true 2, pred 2
        [2.0, 0.0, 1.0],   # true 1, pred 0 (1 is 3rd)
    ])
    labels = np.array([0, 0, 2, 1])
    r = evaluation.classification_report(logits, labels, k=2)
    assert r["top1"] == pytest.approx(0.5)
    # top-2: row0 {0,2} yes; row1 {1,2} no; row2 {2,1} yes; row3 {0,2} no.
    assert r["top2"] == pytest.approx(0.5)
    np.testing.assert_array_equal(
        r["confusion"], [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(r["per_class"], [0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        evaluation.classification_report(logits, labels + 3)


def test_predict_logits_unwraps_dicts():
    def model(x, training=False):
        return {"logits": np.asarray(x)[:, :3]}

    batches = [(np.eye(4)[:2], {"label": np.array([0, 1])}),
               (np.eye(4)[2:], np.array([2, 3]))]
    logits, labels = evaluation.predict_logits(model, batches, verbose=0)
    assert logits.shape == (4, 3)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])


def test_curves_confusion_and_table(tmp_path):
    csv = tmp_path / "history.csv"
    csv.write_text("epoch,loss,top1,val_loss,val_top1\n"
                   "1,4.0,0.1,3.9,0.12\n2,3.0,0.3,3.1,0.28\n")
    hist = plotting.read_history(str(csv))
    assert hist["val_top1"] == [0.12, 0.28]
    png = plotting.plot_training_curves({"s": str(csv)},
                                        str(tmp_path / "c.png"),
                                        teacher_top1=0.5)
    assert os.path.getsize(png) > 5000
    png = plotting.plot_confusion(np.eye(3) * 5, str(tmp_path / "m.png"),
                                  class_names=["a", "b", "c"])
    assert os.path.getsize(png) > 3000
    table = plotting.results_table(
        [{"method": "KD", "top1": [70.0, 72.0, 71.0]},
         {"method": "AT", "top1": [69.5]}])
    lines = table.strip().splitlines()
    assert lines[0] == "| method | top1 |"
    assert lines[2] == "| KD | 71.00 ± 1.00 |"
    assert lines[3] == "| AT | 69.50 |"


def test_strategy_choice_and_chief(monkeypatch):
    with pytest.raises(ValueError, match="Unknown strategy"):
        distribute.make_strategy("ring")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a", "b"]}, '
                       '"task": {"type": "worker", "index": 1}}')
    assert not distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a", "b"]}, '
                       '"task": {"type": "worker", "index": 0}}')
    assert distribute.is_chief()
    assert distribute.scale_learning_rate(0.05, 128) == pytest.approx(0.1)
