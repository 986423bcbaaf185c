"""The one prediction schema shared by every model, out-of-fold and on the test set.

One row per predicted box (detectors) or per predicted image (classifiers):

    image_id, study_id, model, fold      who predicted what (fold -1: a model trained on all data)
    x_min, y_min, x_max, y_max, score    a box in XYXY_NORM (fractions of the original image); empty
                                         for classifier rows
    prob_negative ... prob_atypical      study class probabilities of this image; empty for box rows
    prob_none                            probability that the image has no opacity; empty for box rows

Evaluation and fusion read this and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.files import atomic_path
from utils.core.kind_names import canonical_name
from utils.data.boxes import NORM_TOLERANCE, as_boxes
from utils.data.labels import STUDY_CLASSES

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
STUDY_PROB_COLUMNS = tuple(f"prob_{c}" for c in STUDY_CLASSES)
NONE_PROB_COLUMN = "prob_none"
PREDICTION_COLUMNS = ("image_id", "study_id", "model", "fold", *BOX_COLUMNS, "score", *STUDY_PROB_COLUMNS,
                      NONE_PROB_COLUMN)


class PredictionFileError(ValueError):
    """A predictions table that breaks the schema; names the file and the problem."""


def classifier_rows(image_ids, study_ids, model: str, fold: int, study_probs, none_probs) -> pd.DataFrame:
    """One row per image with its study class probabilities ``(N, 4)`` and none probability ``(N,)``."""
    study_probs = np.asarray(study_probs, dtype=np.float64).reshape(len(image_ids), len(STUDY_CLASSES))
    frame = pd.DataFrame({"image_id": list(image_ids), "study_id": list(study_ids), "model": model, "fold": int(fold)})
    for column in (*BOX_COLUMNS, "score"):
        frame[column] = np.nan
    for k, column in enumerate(STUDY_PROB_COLUMNS):
        frame[column] = study_probs[:, k]
    frame[NONE_PROB_COLUMN] = np.asarray(none_probs, dtype=np.float64).reshape(-1)
    return frame[list(PREDICTION_COLUMNS)]


def detection_rows(image_ids, study_ids, model: str, fold: int, detections) -> pd.DataFrame:
    """Box rows of many images at once: ``detections[i]`` is ``(XYXY_NORM boxes (n, 4), scores (n,))``
    of image ``image_ids[i]``; an image with no box adds no row."""
    counts = [len(scores) for _, scores in detections]
    boxes = np.vstack([as_boxes(b) for b, _ in detections]) if detections else as_boxes([])
    frame = pd.DataFrame(boxes, columns=list(BOX_COLUMNS))
    frame.insert(0, "fold", int(fold))
    frame.insert(0, "model", model)
    frame.insert(0, "study_id", np.repeat(np.asarray(list(study_ids), dtype=object), counts))
    frame.insert(0, "image_id", np.repeat(np.asarray(list(image_ids), dtype=object), counts))
    frame["score"] = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for _, s in detections]) \
        if detections else np.zeros(0)
    for column in (*STUDY_PROB_COLUMNS, NONE_PROB_COLUMN):
        frame[column] = np.nan
    return frame[list(PREDICTION_COLUMNS)]


def check_predictions(frame: pd.DataFrame, where: str = "predictions") -> pd.DataFrame:
    """``frame`` with the schema's columns in order; raises :class:`PredictionFileError` otherwise."""
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise PredictionFileError(f"{where}: missing columns {missing}")
    frame = frame[list(PREDICTION_COLUMNS)].copy()
    boxes = frame[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    has_box = ~np.isnan(boxes).any(axis=1)
    out_of_range = has_box & ((boxes < -NORM_TOLERANCE) | (boxes > 1 + NORM_TOLERANCE)).any(axis=1)
    if out_of_range.any():
        raise PredictionFileError(f"{where}: {int(out_of_range.sum())} boxes are not normalised to [0, 1], "
                                  f"e.g. image {frame.loc[out_of_range, 'image_id'].iloc[0]}")
    probs = frame[[*STUDY_PROB_COLUMNS, NONE_PROB_COLUMN]].to_numpy(dtype=np.float64)
    bad = (probs < 0) | (probs > 1)
    if bad.any():
        raise PredictionFileError(f"{where}: {int(bad.any(axis=1).sum())} rows have probabilities outside [0, 1]")
    return frame


def write_predictions(frame: pd.DataFrame, path) -> Path:
    """Validate and write atomically (temporary file, then rename)."""
    path = Path(path)
    frame = check_predictions(frame, str(path))
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
    return path


def read_predictions(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"{path}: file not found")
    frame = pd.read_csv(path, dtype={"image_id": str, "study_id": str, "model": str})
    if "model" in frame:  # a file written under a model's older name (utils.core.kind_names.LEGACY_NAMES)
        frame["model"] = frame["model"].map(lambda name: canonical_name(name) if isinstance(name, str) else name)
    return check_predictions(frame, str(path))


def study_probabilities(frame: pd.DataFrame) -> pd.DataFrame:
    """Per study, the mean of its images' class probabilities (classifier rows only):
    columns ``study_id`` and ``prob_<class>``."""
    rows = frame.dropna(subset=list(STUDY_PROB_COLUMNS))
    return rows.groupby("study_id", sort=True)[list(STUDY_PROB_COLUMNS)].mean().reset_index()
