"""Pseudo-labels: what the round-one ensemble says about unlabelled radiographs, turned into training rows
of the prepared ``meta.csv`` contract (:data:`utils.data.training_table.PSEUDO_COLUMNS`) by the rules of the config's
``pseudo`` section. train/pseudo_label.py runs the ensemble and writes the rows; this module holds the
rules, so that they are tested on constructed predictions.

The rules (after the 11th and 1st places of the competition):

- **study classifier**, every readable image: soft targets, the ensemble's four study probabilities
  (normalised to sum to one) and its image "none" probability, as its submission would write them
  (``study_targets: hard``: the most probable class and none above ``none_threshold``);
- **detectors**, hard boxes: an image is "none" (no box, a negative) when its none probability is above
  ``none_threshold``; otherwise its fused boxes scored above ``box_threshold`` (at most ``max_boxes``,
  best first) are its boxes; an image with neither is no label for the detectors (it would teach them
  that a likely opacity is background) and they skip it.

``none_threshold`` and ``box_threshold`` left null are chosen on the round-one ensemble's out-of-fold
predictions (the none and opacity classes of the competition metric), each by its rule: ``precision``,
the lowest threshold whose labels are at least ``min_precision`` right, or ``f1``, the F1-best (the 11th
place's choice for both). The defaults: precision for the none (a wrong "none" teaches a detector that an
opacity is background: on the real-data run the F1-best none threshold, 0.22, labelled 41% of the images
none with 37% of those wrong; at precision 0.85 it is 0.43), F1 for the boxes (a box is right only at
IoU > 0.5, which 85% of the boxes reach only above 0.986, where 1% of the boxes are left).

Leak-free by construction: a pseudo-labelled image must not be a training image (:func:`check_disjoint`
refuses any shared image id or a folder inside the training folder), each round-one fold labels the
images for its own fold's round two only (``pseudo_fold``: its models never trained on that fold's
held-out images, so no held-out label reaches round two through the pseudo-labels; the fold chose their
best epoch and the ensemble's calibration, as it does for every out-of-fold figure), and the rows are marked
``pseudo``: :func:`utils.data.training_table.read_meta` leaves them out of everything but training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from utils.core.config import BoxCount, FractionBelowOne, short
from utils.core.files import atomic_path
from utils.data.boxes import as_boxes, denormalize_xyxy
from utils.data.labels import STUDY_CLASSES, boxes_to_json
from utils.data.training_table import META_COLUMNS, PSEUDO_COLUMNS, PSEUDO_FOLD

SECTION = "pseudo"
PSEUDO_LABELS_FILE = "pseudo_labels.json"  # beside the merged meta.csv: thresholds, counts, times


class PseudoLabelError(ValueError):
    """The pseudo-label stage cannot run as asked (overlapping folders, no usable image); names why."""


@dataclass
class PseudoConfig:
    """The ``pseudo`` section: round one's ensemble labelling unlabelled images for round two
    (train/pseudo_label.py, train_all --pseudo-images)."""

    none_threshold: FractionBelowOne | None = None
    """An image is 'none' (no box) above this ensemble none probability (null: chosen on round one's ensemble out
    of fold by none_rule)."""
    box_threshold: FractionBelowOne | None = None
    """Otherwise its fused boxes scored above this are its boxes; an image with neither is skipped by the
    detectors (null: chosen out of fold)."""
    max_boxes: BoxCount | None = None
    """At most this many boxes per image, best first (the 1st place: 2)."""
    study_targets: Literal["soft", "hard"] = "soft"
    """soft (the ensemble's four probabilities and none) | hard (class and none 0/1)."""
    none_rule: Literal["precision", "f1"] = "precision"
    """How a null none_threshold is chosen: precision (the lowest threshold whose labels are min_precision right
    out of fold) | f1 (F1-best; real data: 41% none, 37% wrongly)."""
    box_rule: Literal["precision", "f1"] = "f1"
    """The same for a null box_threshold (IoU > 0.5 boxes reach 0.85 only above 0.986)."""
    min_precision: Annotated[float, Field(gt=0.0, le=1.0)] = 0.85
    """The precision rule's target."""
    round2_start: Literal["scratch", "round1"] = "scratch"
    """scratch (every fold starts as in round one) | round1 (fine-tunes round one's weights of the same model and
    fold; YOLO starts as in round one)."""
    round2_overrides: list[str] = field(default_factory=list)
    """SECTION.KEY=VALUE for round two only (e.g. [study.epochs=2] to fine-tune)."""

    def __post_init__(self):
        for item in self.round2_overrides:
            section, dot, rest = item.partition(".")
            if not dot or "=" not in rest or "=" in section:
                raise ValueError(f"round2_overrides: {short(item)} is not SECTION.KEY=VALUE")


@dataclass(frozen=True)
class Thresholds:
    """The two selection thresholds in use and where each came from (``config`` or ``out of fold``)."""

    none: float
    box: float
    none_source: str = "config"
    box_source: str = "config"


def resolve_thresholds(config: PseudoConfig, best_none: dict | None, best_box: dict | None) -> Thresholds:
    """The config's thresholds, a null one replaced by the one chosen out of fold (``best_*``: by
    ``none_rule`` and ``box_rule``, :func:`utils.scoring.metric.lowest_threshold_at_precision` or
    :func:`utils.scoring.metric.best_f1_threshold` of the round-one ensemble's none and opacity classes)."""
    values = {}
    for name, given, best in (("none", config.none_threshold, best_none), ("box", config.box_threshold, best_box)):
        if given is not None:
            values[name], values[f"{name}_source"] = float(given), "config"
        elif best is None:
            raise PseudoLabelError(f"pseudo.{name}_threshold is null (chosen out of fold) but round one's "
                                   f"out-of-fold {'none' if name == 'none' else 'opacity'} predictions give none "
                                   f"({rule_of(config, name)} rule); set it in the config")
        else:
            values[name] = round(float(best["threshold"]), 4)
            values[f"{name}_source"] = f"out of fold ({describe_choice(config, name, best)})"
    return Thresholds(**values)


def rule_of(config: PseudoConfig, name: str) -> str:
    """The rule choosing threshold ``name`` (``none`` or ``box``) out of fold."""
    return config.none_rule if name == "none" else config.box_rule


def describe_choice(config: PseudoConfig, name: str, best: dict) -> str:
    """How an out-of-fold threshold was chosen, with its precision and recall there."""
    rule = f"lowest with precision >= {config.min_precision}" if rule_of(config, name) == "precision" else "F1-best"
    return f"{rule}: precision {best['precision']:.3f}, recall {best['recall']:.3f}"


def select_labels(targets: pd.DataFrame, thresholds: Thresholds, config: PseudoConfig) -> pd.DataFrame:
    """The selection rules (module docstring) on one row per image of ``targets``: ``image_id``,
    ``study_probs`` ((4,) in :data:`STUDY_CLASSES` order, not necessarily summing to one), ``none_prob``,
    ``boxes`` (XYXY_NORM, best first) and ``scores``. Returns a copy with ``study_target`` ((4,), sums
    to one), ``none_target``, ``label_boxes`` (XYXY_NORM) and ``boxes_known`` (whether the detectors
    train on the image)."""
    out = targets.copy()
    study, none, label_boxes, known = [], [], [], []
    for row in targets.itertuples(index=False):
        probs = np.clip(np.asarray(row.study_probs, dtype=np.float64), 0.0, None)
        probs = probs / probs.sum() if probs.sum() > 0 else np.full(len(STUDY_CLASSES), 1.0 / len(STUDY_CLASSES))
        is_none = float(row.none_prob) > thresholds.none
        if config.study_targets == "hard":
            probs = np.eye(len(STUDY_CLASSES))[int(np.argmax(probs))]
        study.append(probs)
        none.append(float(is_none) if config.study_targets == "hard" else float(row.none_prob))
        boxes, scores = as_boxes(row.boxes), np.asarray(row.scores, dtype=np.float64)
        if is_none:
            kept = as_boxes([])
        else:
            order = np.argsort(-scores, kind="stable")
            kept = boxes[order][scores[order] > thresholds.box][: config.max_boxes]
        label_boxes.append(kept)
        known.append(bool(is_none or len(kept)))
    out["study_target"], out["none_target"], out["label_boxes"], out["boxes_known"] = study, none, label_boxes, known
    return out


def pseudo_rows(selected: pd.DataFrame, fold: int, paths: dict[int, list[str]]) -> pd.DataFrame:
    """:func:`select_labels`' rows (with ``study_id``, ``original_height``, ``original_width``) as
    meta.csv rows labelled by round-one fold ``fold``: boxes in original pixels, fold
    :data:`PSEUDO_FOLD`, the pseudo columns, and ``path_<size>`` from ``paths`` (size -> one path per
    row, relative to the meta.csv)."""
    rows = []
    for row in selected.itertuples(index=False):
        height, width = int(row.original_height), int(row.original_width)
        label = int(np.argmax(row.study_target))
        boxes = denormalize_xyxy(row.label_boxes, float(width), float(height))
        rows.append({"image_id": row.image_id, "study_id": row.study_id, "series_id": "",
                     "patient_id": row.study_id, "original_height": height, "original_width": width,
                     "fold": PSEUDO_FOLD, "study_class": STUDY_CLASSES[label], "study_label": label,
                     "boxes": boxes_to_json(boxes), "n_boxes": len(boxes), "has_box": len(boxes) > 0,
                     "used": True, "excluded_reason": "", "pseudo": True, "pseudo_fold": int(fold),
                     "pseudo_study": json.dumps([round(float(p), 6) for p in row.study_target]),
                     "pseudo_none": round(float(row.none_target), 6), "pseudo_boxes": bool(row.boxes_known)})
    frame = pd.DataFrame(rows, columns=META_COLUMNS + PSEUDO_COLUMNS)
    for size, column in paths.items():
        frame[f"path_{size}"] = list(column)
    return frame


def check_disjoint(train_ids, image_ids, image_files, training_dirs) -> None:
    """Refuse (``PseudoLabelError``) to pseudo-label a training image: an image id of the prepared
    training table (``train_ids``) among ``image_ids``, or an image file inside one of
    ``training_dirs`` (the training split's folder, the prepared folder)."""
    shared = sorted(set(map(str, image_ids)) & set(map(str, train_ids)))
    if shared:
        raise PseudoLabelError(f"{len(shared)} of the {len(set(image_ids))} images to pseudo-label are training images "
                               f"(e.g. {shared[:3]}): their figures would be scored on labels the models made "
                               "themselves. Pseudo-label a folder of unlabelled images (the test split)")
    roots = [Path(d).resolve() for d in training_dirs if d is not None]
    for path in image_files:
        resolved = Path(path).resolve()
        for root in roots:
            if resolved.is_relative_to(root):
                raise PseudoLabelError(f"{path} lies in the training folder {root}: the images to pseudo-label must "
                                       "not overlap the training images")


def check_not_training_content(decoded, training, train_ids, train_studies, training_headers) -> None:
    """Refuse (``PseudoLabelError``) a decoded image (``utils.data.decoding_cache.DecodedImage``) that is a training
    image under another name: its DICOM header's SOPInstanceUID is a training image, its
    StudyInstanceUID a training study, or its pixels hash like a training image's (``training``: the
    prepared training folder's decoded records, ``training_headers`` their file). A resized or lossily
    re-encoded copy (a near-duplicate) hashes differently and is not found (docs/reference.md)."""
    unhashed = sum(not record.pixel_hash for record in training)
    if unhashed:
        raise PseudoLabelError(f"{training_headers}: {unhashed} training image(s) without a pixel hash (prepared "
                               "before the content check): run train/prepare.py again with the same --out (it "
                               "decodes only those), then pseudo-label")
    images = set(map(str, train_ids)) | {r.header_image_uid for r in training if r.header_image_uid}
    studies = set(map(str, train_studies)) | {r.header_study_uid for r in training if r.header_study_uid}
    hashes = {record.pixel_hash: record.image_id for record in training}
    for record in decoded:
        if record.header_image_uid and record.header_image_uid in images:
            why = f"its DICOM header's SOPInstanceUID {record.header_image_uid} is a training image"
        elif record.header_study_uid and record.header_study_uid in studies:
            why = f"its DICOM header's StudyInstanceUID {record.header_study_uid} is a training study"
        elif record.pixel_hash in hashes:
            why = f"its pixels are those of training image {hashes[record.pixel_hash]}"
        else:
            continue
        raise PseudoLabelError(f"image {record.image_id} to pseudo-label is a training image under another name: "
                               f"{why}. Its fold's validation pixels would enter that fold's training; "
                               "pseudo-label a folder of unlabelled images (the test split)")


def merge_meta(real_meta_csv, pseudo: pd.DataFrame, out_csv) -> pd.DataFrame:
    """The prepared ``real_meta_csv`` (its rows unchanged, their image paths made relative to
    ``out_csv``'s folder) followed by the ``pseudo`` rows, written atomically to ``out_csv``."""
    real_meta_csv, out_csv = Path(real_meta_csv), Path(out_csv)
    real = pd.read_csv(real_meta_csv, dtype=str, keep_default_na=False)
    if "pseudo" in real and real["pseudo"].astype(str).str.lower().isin(("true", "1")).any():
        raise PseudoLabelError(f"{real_meta_csv} already holds pseudo-labelled rows: give round one's meta.csv")
    size_columns = [c for c in real.columns if c.startswith("path_")]
    for column in size_columns:
        real[column] = [os.path.relpath(real_meta_csv.parent / p, out_csv.parent) if p else "" for p in real[column]]
    real = real.reindex(columns=META_COLUMNS + size_columns)
    for column in PSEUDO_COLUMNS:
        real[column] = False if column in ("pseudo", "pseudo_boxes") else ""
    merged = pd.concat([real, pseudo.reindex(columns=real.columns)], ignore_index=True)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_csv) as temporary:
        merged.to_csv(temporary, index=False)
    return merged
