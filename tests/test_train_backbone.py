"""train/train_backbone.py: a real tiny run on synthetic NIH data and what it leaves behind."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from utils.classification import format_multilabel_table, multilabel_report
from utils.config import load_section
from utils.engine import load_checkpoint
from utils.nih import NIH_FINDINGS, BackboneConfig


def test_backbone_run_writes_every_artefact(backbone_run):
    metrics = pd.read_csv(backbone_run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_mean_auc", "val_mean_f1", "val_mean_accuracy"} <= set(metrics.columns)
    assert (backbone_run / "loss_curve.png").stat().st_size > 1000
    config = load_section(backbone_run / "config.yaml", "backbone", BackboneConfig)
    assert (config.image_size, config.epochs, config.pretrained) == (48, 2, "none")
    best = load_checkpoint(backbone_run / "best.pt")
    assert best["metrics"]["monitor"] == "val_mean_auc" and best["config"] == vars(config)
    report = json.loads((backbone_run / "eval_test.json").read_text())
    assert list(report["per_output"]) == list(NIH_FINDINGS)
    assert report["split"] == "test" and 0 <= report["mean_accuracy"] <= 1
    assert "mean" in (backbone_run / "eval_test.txt").read_text()


def test_multilabel_report_by_hand():
    targets = [[1, 0], [0, 0], [1, 1], [0, 0]]
    probabilities = [[0.9, 0.2], [0.4, 0.1], [0.6, 0.3], [0.7, 0.2]]
    report = multilabel_report(targets, probabilities, ["a", "b"])
    a, b = report["per_output"]["a"], report["per_output"]["b"]
    assert a["auc"] == pytest.approx(0.75)  # positives 0.9, 0.6 vs negatives 0.4, 0.7: 3 of 4 pairs
    assert a["f1"] == pytest.approx(0.8) and a["accuracy"] == pytest.approx(0.75)
    assert b["auc"] == pytest.approx(1.0) and b["f1"] == 0.0 and b["accuracy"] == pytest.approx(0.75)
    assert report["mean_auc"] == pytest.approx(0.875)
    one_class = multilabel_report([[0], [0]], [[0.1], [0.2]], ["c"])
    assert one_class["per_output"]["c"]["auc"] is None and one_class["mean_auc"] is None
    assert "n/a" in format_multilabel_table(one_class)
