"""The competition metric: PASCAL VOC 2010 mean average precision at IoU > 0.5 over six classes.

Per class, every prediction of that class over all scored ids is sorted by confidence (descending)
and matched greedily to the not-yet-matched ground-truth box of the same class and id with the
highest IoU; IoU > 0.5 makes a true positive, anything else a false positive. AP is the area under
the precision-recall curve after making precision non-increasing (all-point interpolation), with
the number of ground-truth boxes of the class as recall's denominator.

Ties in confidence are broken by the prediction's content (id, then box), never by row order, so
the score does not depend on how the submission's rows are ordered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.core.report import text_table
from utils.data.boxes import as_boxes, iou_matrix
from utils.data.labels import (
    IMAGE_CLASSES,
    IMAGE_SUFFIX,
    STUDY_CLASSES,
    STUDY_SUFFIX,
    boxes_from_json,
    load_study_labels,
)
from utils.data.submission import parse_prediction_string, row_kind

IOU_THRESHOLD = 0.5
ALL_CLASSES = STUDY_CLASSES + IMAGE_CLASSES


@dataclass
class ClassDetections:
    """Predictions and ground truth of one class, grouped by id."""

    truths: dict[str, np.ndarray]  # id -> XYXY boxes
    predictions: list[tuple[float, str, tuple]]  # (confidence, id, box)


def precision_recall(detections: ClassDetections, iou_threshold: float = IOU_THRESHOLD,
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """The class's precision-recall curve ``(recall, precision)``, one point per prediction in
    descending confidence; None when the class has no ground truth."""
    n_truths = sum(len(b) for b in detections.truths.values())
    if n_truths == 0:
        return None
    order = sorted(detections.predictions, key=lambda p: (-p[0], p[1], p[2]))
    # The greedy matching of an id depends only on that id's predictions in this order, so each id is
    # matched on its own (one IoU matrix per id, not one per prediction).
    positions: dict[str, list[int]] = {}
    for k, (_, identifier, _) in enumerate(order):
        positions.setdefault(identifier, []).append(k)
    true_positive = np.zeros(len(order))
    for identifier, ranks in positions.items():
        truths = detections.truths.get(identifier)
        if truths is None or len(truths) == 0:
            continue
        ious = iou_matrix([order[k][2] for k in ranks], truths)
        matched = np.zeros(len(truths), dtype=bool)
        for row, k in enumerate(ranks):
            candidates = np.where(matched, -1.0, ious[row])
            best = int(np.argmax(candidates))
            if candidates[best] > iou_threshold:
                matched[best] = True
                true_positive[k] = 1.0
    cum_tp = np.cumsum(true_positive)
    return cum_tp / n_truths, cum_tp / np.arange(1, len(order) + 1)


def average_precision(detections: ClassDetections, iou_threshold: float = IOU_THRESHOLD) -> float | None:
    """VOC 2010 all-point AP of one class; None when the class has no ground truth."""
    curve = precision_recall(detections, iou_threshold)
    if curve is None:
        return None
    if not detections.predictions:
        return 0.0
    recall, precision = curve
    # All-point interpolation: precision envelope, then sum over the recall steps.
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def best_f1_threshold(detections: ClassDetections, iou_threshold: float = IOU_THRESHOLD) -> dict | None:
    """The confidence from which predictions are best shown to people: the one maximising F1 (IoU >
    ``iou_threshold`` matches), with its ``f1``, ``precision`` and ``recall``; None without ground
    truth or predictions."""
    curve = precision_recall(detections, iou_threshold)
    if curve is None or not detections.predictions:
        return None
    recall, precision = curve
    f1 = np.where(recall + precision > 0, 2 * recall * precision / np.maximum(recall + precision, 1e-12), 0.0)
    best = int(np.argmax(f1))
    confidences = sorted((p[0] for p in detections.predictions), reverse=True)  # precision_recall's order
    return {"threshold": float(confidences[best]), "f1": float(f1[best]), "precision": float(precision[best]),
            "recall": float(recall[best])}


def lowest_threshold_at_precision(detections: ClassDetections, min_precision: float,
                                  iou_threshold: float = IOU_THRESHOLD) -> dict | None:
    """The lowest confidence from which the predictions kept are at least ``min_precision`` right (IoU >
    ``iou_threshold`` matches): the most predictions that stay that precise, with the ``precision`` and
    ``recall`` there; None without ground truth or predictions, or when no cut is that precise."""
    curve = precision_recall(detections, iou_threshold)
    if curve is None or not detections.predictions:
        return None
    recall, precision = curve
    precise = np.flatnonzero(precision >= min_precision)
    if not len(precise):
        return None
    cut = int(precise[-1])
    confidences = sorted((p[0] for p in detections.predictions), reverse=True)  # precision_recall's order
    return {"threshold": float(confidences[cut]), "precision": float(precision[cut]), "recall": float(recall[cut])}


def ground_truth_from_files(image_labels_csv, study_labels_csv) -> dict[str, list[tuple[str, tuple]]]:
    """Competition label files -> ``{id: [(class, box), ...]}`` for every image and study id.

    Image truth comes from the ``label`` column (already in submission form); study truth is the
    study's one class with the dummy box.
    """
    truth: dict[str, list[tuple[str, tuple]]] = {}
    images = pd.read_csv(image_labels_csv, dtype=str, keep_default_na=False)
    for identifier, label in zip(images["id"], images["label"]):
        truth[identifier] = [(p.label, p.box) for p in parse_prediction_string(label)]
    studies = load_study_labels(study_labels_csv)
    for study_id, study_class in zip(studies["study_id"], studies["study_class"]):
        truth[study_id + STUDY_SUFFIX] = [(study_class, (0.0, 0.0, 1.0, 1.0))]
    return truth


def ground_truth_from_table(table: pd.DataFrame) -> dict[str, list[tuple[str, tuple]]]:
    """The same truth as :func:`ground_truth_from_files`, from a prepared ``meta.csv`` table.

    Studies come from every row; images only from rows marked ``used`` (an un-annotated duplicate
    has no box although its study is positive, so calling it ``none`` would be wrong).
    """
    truth: dict[str, list[tuple[str, tuple]]] = {}
    for study_id, study_class in table[["study_id", "study_class"]].drop_duplicates().itertuples(index=False):
        truth[f"{study_id}{STUDY_SUFFIX}"] = [(study_class, (0.0, 0.0, 1.0, 1.0))]
    used = table[table["used"].astype(bool)] if "used" in table else table
    for image_id, boxes in zip(used["image_id"], used["boxes"]):
        boxes = boxes_from_json(boxes) if isinstance(boxes, str) else as_boxes(boxes)
        items = [("opacity", tuple(float(v) for v in box)) for box in boxes]
        truth[f"{image_id}{IMAGE_SUFFIX}"] = items or [("none", (0.0, 0.0, 1.0, 1.0))]
    return truth


def class_detections(submission: pd.DataFrame, truth: dict[str, list[tuple[str, tuple]]]) -> dict[str, ClassDetections]:
    """Per class, the truth boxes and the submission's predictions on the ids of ``truth``."""
    per_class = {c: ClassDetections({}, []) for c in ALL_CLASSES}
    for identifier, items in truth.items():
        kind_classes = STUDY_CLASSES if row_kind(identifier) == "study" else IMAGE_CLASSES
        for label, box in items:
            if label in kind_classes:
                group = per_class[label].truths
                group[identifier] = np.vstack([group.get(identifier, as_boxes([])), as_boxes([box])])
    for identifier, text in zip(submission["id"].astype(str), submission["PredictionString"]):
        if identifier not in truth:
            continue
        kind_classes = STUDY_CLASSES if row_kind(identifier) == "study" else IMAGE_CLASSES
        try:
            predictions = parse_prediction_string(text)
        except ValueError as err:
            raise ValueError(f"{identifier}: {err}") from err
        for p in predictions:
            if p.label in kind_classes and np.isfinite(p.confidence) and all(np.isfinite(p.box)):
                per_class[p.label].predictions.append((p.confidence, identifier, tuple(p.box)))
    return per_class


def score(submission: pd.DataFrame, truth: dict[str, list[tuple[str, tuple]]]) -> dict:
    """Score a submission table against ``truth`` (see :func:`ground_truth_from_files`).

    Only ids in the truth are scored; an id missing from the submission predicts nothing. Study
    classes are scored on study rows only and image classes on image rows only. Returns
    ``{"map", "study_map", "image_map", "ap": {class: AP or None}, "n_studies", "n_images"}``; a class
    with no ground truth has AP None and is left out of the means.
    """
    per_class = class_detections(submission, truth)
    ap = {c: average_precision(per_class[c]) for c in ALL_CLASSES}

    def mean(classes):
        values = [ap[c] for c in classes if ap[c] is not None]
        return float(np.mean(values)) if values else None

    return {
        "map": mean(ALL_CLASSES),
        "study_map": mean(STUDY_CLASSES),
        "image_map": mean(IMAGE_CLASSES),
        "ap": ap,
        "n_studies": sum(1 for i in truth if i.endswith(STUDY_SUFFIX)),
        "n_images": sum(1 for i in truth if i.endswith(IMAGE_SUFFIX)),
    }


def format_score_table(result: dict) -> str:
    """A readable table of a :func:`score` result."""
    return format_score_columns({"AP@0.5": result}) + (
        f"\n({result['n_studies']} studies, {result['n_images']} images scored)")


def format_score_columns(results: dict[str, dict]) -> str:
    """Several :func:`score` results side by side, one column per name."""
    widths = (15, *(max(10, len(name) + 2) for name in results))
    header, *classes = text_table(("class", *results), [(c, *(r["ap"][c] for r in results.values()))
                                                        for c in ALL_CLASSES], widths)
    summaries = (("study_map", "study mAP"), ("image_map", "image mAP"), ("map", "final mAP"))
    _, *means = text_table(("", *results), [(label, *(r[key] for r in results.values()))
                                            for key, label in summaries], widths)
    return "\n".join([header, *classes, "-" * sum(widths), *means])
