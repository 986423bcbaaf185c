"""The trivial baselines every model must beat (report tables, the calibration, the baseline submission):
the training priors for the study rows and the images' none, plus one fixed box per lung."""

from __future__ import annotations

import pandas as pd

from utils.data.boxes import denormalize_xyxy
from utils.data.dicom import DicomReadError, read_dicom_header
from utils.data.inputs import find_dicoms
from utils.data.labels import IMAGE_SUFFIX, STUDY_CLASSES, STUDY_SUFFIX
from utils.data.submission import image_prediction_string, read_submission, study_prediction_string
from utils.scoring.detection import FIXED_LUNG_BOXES


def baseline_rows(identifiers, sizes: dict, meta: pd.DataFrame, kind: str = "prior-boxes") -> pd.DataFrame:
    """Baseline rows for submission ``identifiers`` from the priors of the prepared training ``meta``;
    ``sizes[image_id]`` is the image's ``(width, height)`` (None or absent: no boxes)."""
    used = meta[meta["used"].astype(bool)]
    studies = used.drop_duplicates("study_id")
    prior = {c: float((studies["study_class"] == c).mean()) for c in STUDY_CLASSES}
    p_opacity = float(used["has_box"].astype(bool).mean())
    rows = []
    for identifier in identifiers:
        if identifier.endswith(STUDY_SUFFIX):
            rows.append((identifier, study_prediction_string(prior)))
            continue
        size = sizes.get(identifier[: -len(IMAGE_SUFFIX)])
        if kind == "prior-boxes" and size is not None:
            boxes = denormalize_xyxy(FIXED_LUNG_BOXES, *size)
            text = image_prediction_string(boxes, [p_opacity] * len(boxes), 1.0 - p_opacity, *size)
        else:
            text = image_prediction_string([], [], 1.0 - p_opacity, 1, 1)
        rows.append((identifier, text))
    return pd.DataFrame(rows, columns=["id", "PredictionString"])


def baseline_submission(data_dir, meta: pd.DataFrame, kind: str = "prior-boxes") -> pd.DataFrame:
    """A submission for every id of ``data_dir/sample_submission.csv`` from training priors."""
    sample = read_submission(f"{data_dir}/sample_submission.csv")
    sizes = {}
    for path in find_dicoms(f"{data_dir}/test"):
        try:
            header = read_dicom_header(path)
            sizes[path.stem] = (header.columns, header.rows)
        except DicomReadError:
            sizes[path.stem] = None  # unreadable: falls back to no boxes
    return baseline_rows(sample["id"].astype(str), sizes, meta, kind)
