"""What both opacity detectors share outside their models: the prepared table they train on, and
their evaluation (box predictions in the shared schema scored with the competition metric, beside
the trivial baseline of one fixed box per lung)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.files import atomic_path
from utils.core.report import show
from utils.data.boxes import denormalize_xyxy, normalize_xyxy
from utils.data.labels import IMAGE_SUFFIX, boxes_from_json
from utils.data.predictions import BOX_COLUMNS, write_predictions
from utils.data.submission import image_prediction_string
from utils.data.training_table import read_meta
from utils.scoring.metric import ground_truth_from_table, score

log = logging.getLogger(__name__)

# One box per lung in XYXY_NORM: where opacities are most common on a frontal radiograph.
FIXED_LUNG_BOXES = np.array([[0.18, 0.3, 0.45, 0.75], [0.55, 0.3, 0.82, 0.75]])


def box_submission(predictions: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Image rows (``<id>_image``, ``opacity score x1 y1 x2 y2 ...`` in original DICOM pixels) for every
    image of ``table``; an image without box rows predicts nothing."""
    boxes = predictions.dropna(subset=list(BOX_COLUMNS))
    by_image = {image_id: group for image_id, group in boxes.groupby("image_id")}
    rows = []
    for image_id, width, height in table[["image_id", "original_width", "original_height"]].itertuples(index=False):
        group = by_image.get(image_id)
        if group is None:
            text = ""
        else:
            pixels = denormalize_xyxy(group[list(BOX_COLUMNS)].to_numpy(), float(width), float(height))
            text = image_prediction_string(pixels, group["score"].to_numpy(), None, float(width), float(height))
        rows.append((f"{image_id}{IMAGE_SUFFIX}", text))
    return pd.DataFrame(rows, columns=["id", "PredictionString"])


def fixed_box_predictions(table: pd.DataFrame) -> pd.DataFrame:
    """The trivial detector: both :data:`FIXED_LUNG_BOXES` on every image, all with score 1."""
    rows = [(image_id, *box, 1.0) for image_id in table["image_id"] for box in FIXED_LUNG_BOXES]
    return pd.DataFrame(rows, columns=["image_id", *BOX_COLUMNS, "score"])


def opacity_ap(predictions: pd.DataFrame, table: pd.DataFrame) -> float | None:
    """Opacity AP@0.5 (the competition metric's opacity class) of box predictions over the used
    images of ``table`` (an un-annotated duplicate has no boxes to find); None without any truth box."""
    used = table[table["used"].astype(bool)]
    truth = {k: v for k, v in ground_truth_from_table(used).items() if k.endswith(IMAGE_SUFFIX)}
    return score(box_submission(predictions, used), truth)["ap"]["opacity"]


def detector_scores(predictions: pd.DataFrame, table: pd.DataFrame) -> dict:
    """The detector's opacity AP, the fixed-box baseline's on the same images, and counts."""
    used = table[table["used"].astype(bool)]
    return {
        "opacity_ap": opacity_ap(predictions, used),
        "baseline_fixed_boxes_ap": opacity_ap(fixed_box_predictions(used), used),
        "n_images": int(len(used)),
        "n_truth_boxes": int(used["n_boxes"].astype(int).sum()),
        "n_predicted_boxes": int(predictions.dropna(subset=list(BOX_COLUMNS)).shape[0]),
    }


def read_detection_table(meta_csv, image_size: int, predict_size: int, pseudo: bool = False) -> pd.DataFrame:
    """meta.csv (:func:`utils.data.training_table.read_meta`; pseudo-labelled rows with ``pseudo``) with the
    training-size ``image_path``, the ``predict_path`` at ``predict_size`` and each image's boxes as
    XYXY_NORM arrays (``boxes_norm``)."""
    table = read_meta(meta_csv, image_size, pseudo)
    table["predict_path"] = read_meta(meta_csv, predict_size, pseudo)["image_path"]
    table["boxes_norm"] = [normalize_xyxy(boxes_from_json(b), float(w), float(h))
                           for b, w, h in zip(table["boxes"], table["original_width"], table["original_height"])]
    return table


def format_detector_scores(scores: dict) -> str:
    lines = [f"opacity AP@0.5            {show(scores['opacity_ap'])}",
             f"fixed-box baseline AP@0.5 {show(scores['baseline_fixed_boxes_ap'])}",
             f"({scores['n_images']} images, {scores['n_truth_boxes']} true boxes, "
             f"{scores['n_predicted_boxes']} predicted boxes)"]
    lines += [f"fold {fold}: {show(ap)}" for fold, ap in scores.get("per_fold", {}).items()]
    return "\n".join(lines)


def write_detector_report(oof: pd.DataFrame, table: pd.DataFrame, out) -> dict:
    """``oof_predictions.csv`` and the opacity AP of those predictions over the images of ``table``
    (the held-out folds), overall and per fold, beside the fixed-box baseline on the same images:
    ``oof_scores.json`` and ``oof_scores.txt`` in ``out``."""
    out = Path(out)
    write_predictions(oof, out / "oof_predictions.csv")
    scores = detector_scores(oof, table)
    scores["per_fold"] = {int(fold): detector_scores(oof[oof["fold"] == fold], part)["opacity_ap"]
                          for fold, part in table.groupby("fold")}
    text = format_detector_scores(scores)
    for name, content in (("oof_scores.json", json.dumps(scores, indent=2) + "\n"), ("oof_scores.txt", text + "\n")):
        with atomic_path(out / name) as temporary:
            temporary.write_text(content)
    log.info("out-of-fold scores (%s):\n%s", out / "oof_scores.json", text)
    return scores
