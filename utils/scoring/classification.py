"""Evaluation of the classifiers: per-finding AUC/F1/accuracy (NIH backbone, report section 4.1) and
the study classifier's out-of-fold study mAP and none AP through the competition metric."""

from __future__ import annotations

import numpy as np
import pandas as pd

from utils.core.report import text_table
from utils.data.labels import IMAGE_SUFFIX, STUDY_CLASSES, STUDY_SUFFIX
from utils.data.predictions import NONE_PROB_COLUMN, STUDY_PROB_COLUMNS, classifier_rows, study_probabilities
from utils.data.submission import image_prediction_string, study_prediction_string
from utils.scoring.metric import ground_truth_from_table, score


def multilabel_report(targets, probabilities, names, threshold: float = 0.5) -> dict:
    """Per output: ROC AUC (None when only one class is present), F1 and accuracy at ``threshold``,
    and the number of positives; plus their means over the outputs (AUC over those defined)."""
    from sklearn.metrics import f1_score, roc_auc_score  # here: sklearn costs 1.5 s to import in every stage

    targets = np.asarray(targets, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if targets.shape != probabilities.shape or targets.ndim != 2 or targets.shape[1] != len(names):
        raise ValueError(f"targets {targets.shape} and probabilities {probabilities.shape} must both be "
                         f"(N, {len(names)})")
    predicted = probabilities >= threshold
    per_output = {}
    for k, name in enumerate(names):
        truth = targets[:, k] > 0.5
        auc = float(roc_auc_score(truth, probabilities[:, k])) if 0 < truth.sum() < len(truth) else None
        per_output[name] = {
            "auc": auc,
            "f1": float(f1_score(truth, predicted[:, k], zero_division=0.0)),
            "accuracy": float(np.mean(truth == predicted[:, k])),
            "positives": int(truth.sum()),
        }
    aucs = [m["auc"] for m in per_output.values() if m["auc"] is not None]
    return {
        "per_output": per_output,
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "mean_f1": float(np.mean([m["f1"] for m in per_output.values()])),
        "mean_accuracy": float(np.mean([m["accuracy"] for m in per_output.values()])),
        "threshold": threshold,
        "n_images": int(len(targets)),
    }


def format_multilabel_table(report: dict) -> str:
    widths = (20, 8, 8, 10, 11)
    header, *rows = text_table(("finding", "AUC", "F1", "accuracy", "positives"),
                               [(name, m["auc"], m["f1"], m["accuracy"], m["positives"])
                                for name, m in report["per_output"].items()], widths)
    mean = text_table(("mean", report["mean_auc"], report["mean_f1"], report["mean_accuracy"], ""), [], widths)
    return "\n".join([header, *rows, "-" * sum(widths), *mean,
                      f"({report['n_images']} images, threshold {report['threshold']})"])


def classifier_submission(predictions: pd.DataFrame) -> pd.DataFrame:
    """Classifier prediction rows -> submission rows: each study with the mean of its images' class
    probabilities, each image with ``none p 0 0 1 1`` (the dummy box needs no image size)."""
    studies = study_probabilities(predictions)
    study_rows = [(f"{row.study_id}{STUDY_SUFFIX}",
                   study_prediction_string({c: getattr(row, f"prob_{c}") for c in STUDY_CLASSES}))
                  for row in studies.itertuples(index=False)]
    images = predictions.dropna(subset=[NONE_PROB_COLUMN]).groupby("image_id")[NONE_PROB_COLUMN].mean()
    image_rows = [(f"{image_id}{IMAGE_SUFFIX}", image_prediction_string([], [], p, 1.0, 1.0))
                  for image_id, p in images.items()]
    return pd.DataFrame(study_rows + image_rows, columns=["id", "PredictionString"])


def study_classifier_scores(predictions: pd.DataFrame, table: pd.DataFrame) -> dict:
    """Competition-metric scores of classifier predictions against the prepared ``table`` rows of the
    predicted studies: ``study_map``, ``none_ap`` and every class AP (``score``'s result)."""
    predicted = table[table["study_id"].isin(set(predictions["study_id"]))]
    result = score(classifier_submission(predictions), ground_truth_from_table(predicted))
    result["none_ap"] = result["ap"]["none"]
    return result


def study_accuracy(predictions: pd.DataFrame, table: pd.DataFrame) -> float:
    """Fraction of studies whose most probable class is the true one (a readable companion to mAP)."""
    studies = study_probabilities(predictions).merge(
        table[["study_id", "study_label"]].drop_duplicates(), on="study_id", how="inner")
    if studies.empty:
        return float("nan")
    return float(np.mean(studies[list(STUDY_PROB_COLUMNS)].to_numpy().argmax(axis=1) == studies["study_label"]))


def prior_predictions(images: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """The trivial baseline: every image of ``images`` (``image_id``, ``study_id``) gets the constant
    study class prior and none share of the used ``train`` rows (one vote per study)."""
    used = train[train["used"]]
    studies = used.drop_duplicates("study_id")
    prior = np.array([(studies["study_class"] == c).mean() for c in STUDY_CLASSES])
    p_none = float((used["n_boxes"].astype(int) == 0).mean())
    n = len(images)
    return classifier_rows(images["image_id"], images["study_id"], "prior", 0, np.tile(prior, (n, 1)),
                           np.full(n, p_none))


def mean_predictions(frames: list[pd.DataFrame], model: str) -> pd.DataFrame:
    """Several models' classifier rows of the same images -> one row per image with the mean of their
    study and none probabilities: the fold averaging of the study member, on prediction tables."""
    rows = pd.concat([f.dropna(subset=list(STUDY_PROB_COLUMNS)) for f in frames], ignore_index=True)
    columns = [*STUDY_PROB_COLUMNS, NONE_PROB_COLUMN]
    mean = rows.groupby(["image_id", "study_id"], sort=True)[columns].mean().reset_index()
    return classifier_rows(mean["image_id"], mean["study_id"], model, -1, mean[list(STUDY_PROB_COLUMNS)].to_numpy(),
                           mean[NONE_PROB_COLUMN].to_numpy())
