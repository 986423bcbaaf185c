"""train/train_backbone.py: a real tiny run on synthetic NIH data and what it leaves behind."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from utils.core.config import load_section
from utils.data.nih import NIH_FINDINGS
from utils.kinds.backbone.config import BackboneConfig
from utils.scoring.classification import format_multilabel_table, multilabel_report
from utils.training.checkpoints import load_checkpoint


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
    assert report["split"] == "test" and report["checkpoint"] == str(backbone_run / "best.pt")
    assert "mean" in (backbone_run / "eval_test.txt").read_text()


def _pairwise_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the share of (positive, negative) pairs ranked right, ties counting half."""
    positive, negative = scores[truth == 1][:, None], scores[truth == 0][None, :]
    return float(np.mean((positive > negative) + 0.5 * (positive == negative)))


def test_the_test_report_is_the_best_checkpoint_scored_again_by_hand(backbone_run, nih_dataset):
    """Every figure of eval_test.json recomputed another way: the best checkpoint run over the test split
    in a plain loop, AUC as ranked pairs, accuracy by counting."""
    import torch

    from utils.data.datasets import ImageDataset
    from utils.data.nih import assign_nih_splits, load_nih_entries
    from utils.data.presets import build_transform
    from utils.kinds.backbone.network import MultiLabelClassifier

    config = load_section(backbone_run / "config.yaml", "backbone", BackboneConfig)
    entries = load_nih_entries(nih_dataset)
    entries["split"] = assign_nih_splits(entries, nih_dataset, config.val_fraction, seed=config.seed)
    test = entries[entries["split"] == "test"].reset_index(drop=True)
    model = MultiLabelClassifier(len(NIH_FINDINGS), config.arch, None)
    model.load_state_dict(load_checkpoint(backbone_run / "best.pt")["model"])
    model.eval()
    data = ImageDataset(test["path"], test["targets"], build_transform("nih_eval", config.image_size, config.resize))
    with torch.no_grad():
        scores = np.stack([model(data[i][0][None])["logits"].sigmoid()[0].numpy() for i in range(len(data))])
    truth = np.stack(test["targets"]).astype(int)
    report = json.loads((backbone_run / "eval_test.json").read_text())
    accuracies, aucs = [], []
    for k, finding in enumerate(NIH_FINDINGS):
        accuracy = float(np.mean(truth[:, k] == (scores[:, k] >= config.threshold)))
        accuracies.append(accuracy)
        assert report["per_output"][finding]["accuracy"] == pytest.approx(accuracy), finding
        assert report["per_output"][finding]["positives"] == int(truth[:, k].sum()), finding
        if 0 < truth[:, k].sum() < len(truth):
            aucs.append(_pairwise_auc(truth[:, k], scores[:, k]))
            assert report["per_output"][finding]["auc"] == pytest.approx(aucs[-1], abs=1e-6), finding
    assert report["mean_accuracy"] == pytest.approx(np.mean(accuracies))
    assert report["mean_auc"] == pytest.approx(np.mean(aucs), abs=1e-6)


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
