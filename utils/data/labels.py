"""The competition's label files as one tidy table per image, and patient-grouped folds.

Class names and CSV column names are defined here once; every other module imports them.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data.boxes import as_boxes, kaggle_xywh_to_xyxy

STUDY_CLASSES = ("negative", "typical", "indeterminate", "atypical")
IMAGE_CLASSES = ("none", "opacity")
# train_study_level.csv column for each study class, in STUDY_CLASSES order.
STUDY_COLUMNS = (
    "Negative for Pneumonia",
    "Typical Appearance",
    "Indeterminate Appearance",
    "Atypical Appearance",
)
STUDY_SUFFIX = "_study"
IMAGE_SUFFIX = "_image"

# Policies for studies with several images (the organisers labelled only one of them).
DUPLICATES_KEEP_BOXED = "keep_boxed"  # positive study: keep the boxed image, mark the others
DUPLICATES_KEEP_ALL = "keep_all"
DUPLICATE_POLICIES = (DUPLICATES_KEEP_BOXED, DUPLICATES_KEEP_ALL)
EXCLUDED_UNLABELLED_DUPLICATE = "unlabelled_duplicate"


class LabelFileError(ValueError):
    """A label file that does not have the competition's format; names the file and the problem."""


def strip_suffix(identifier: str, suffix: str) -> str:
    """``'000a312787f2_image'`` -> ``'000a312787f2'``."""
    return identifier[: -len(suffix)] if identifier.endswith(suffix) else identifier


def parse_kaggle_boxes(text) -> np.ndarray:
    """The ``boxes`` field of train_image_level.csv (a Python literal, or empty) -> XYXY_PX array."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or str(text).strip() in ("", "nan"):
        return as_boxes([])
    items = ast.literal_eval(str(text))
    return kaggle_xywh_to_xyxy([[d["x"], d["y"], d["width"], d["height"]] for d in items])


def boxes_to_json(boxes) -> str:
    """XYXY_PX array -> compact JSON list of lists (how meta.csv stores boxes)."""
    return json.dumps([[round(float(v), 3) for v in box] for box in as_boxes(boxes)])


def boxes_from_json(text) -> np.ndarray:
    """Inverse of :func:`boxes_to_json`; empty or missing -> (0, 4)."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or str(text).strip() == "":
        return as_boxes([])
    return as_boxes(json.loads(text))


def _read_csv(path, columns) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"{path}: file not found")
    frame = pd.read_csv(path, dtype={"id": str, "StudyInstanceUID": str})
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LabelFileError(f"{path}: missing columns {missing}; has {list(frame.columns)}")
    return frame


def load_study_labels(path) -> pd.DataFrame:
    """train_study_level.csv -> columns ``study_id``, ``study_class`` (name), ``study_label`` (0-3)."""
    frame = _read_csv(path, ["id", *STUDY_COLUMNS])
    onehot = frame[list(STUDY_COLUMNS)].to_numpy()
    bad = onehot.sum(axis=1) != 1
    if bad.any():
        raise LabelFileError(f"{path}: {int(bad.sum())} rows are not one-hot, e.g. {frame.loc[bad, 'id'].iloc[0]}")
    labels = onehot.argmax(axis=1)
    return pd.DataFrame({
        "study_id": [strip_suffix(i, STUDY_SUFFIX) for i in frame["id"]],
        "study_class": [STUDY_CLASSES[k] for k in labels],
        "study_label": labels.astype(int),
    })


def load_image_labels(path) -> pd.DataFrame:
    """train_image_level.csv -> columns ``image_id``, ``study_id``, ``boxes`` (XYXY_PX arrays), ``n_boxes``."""
    frame = _read_csv(path, ["id", "boxes", "label", "StudyInstanceUID"])
    boxes = []
    for identifier, text in zip(frame["id"], frame["boxes"]):
        try:
            boxes.append(parse_kaggle_boxes(text))
        except (ValueError, SyntaxError, KeyError, TypeError) as err:
            raise LabelFileError(f"{path}: row {identifier}: unreadable boxes {text!r} ({err})") from err
    return pd.DataFrame({
        "image_id": [strip_suffix(i, IMAGE_SUFFIX) for i in frame["id"]],
        "study_id": frame["StudyInstanceUID"].astype(str).to_numpy(),
        "boxes": boxes,
        "n_boxes": [len(b) for b in boxes],
    })


def build_image_table(
    image_labels: pd.DataFrame,
    study_labels: pd.DataFrame,
    patients: pd.DataFrame | None = None,
    duplicates: str = DUPLICATES_KEEP_BOXED,
) -> pd.DataFrame:
    """One row per image: ids, patient, study class, XYXY_PX boxes and whether it is used for training.

    ``patients`` (optional) maps ``image_id`` to ``patient_id`` (and may carry ``series_id``,
    ``original_height``, ``original_width``); without it the study id stands in for the patient.
    With ``duplicates='keep_boxed'``, the un-boxed images of a positive study that has a boxed image
    are marked ``used=False`` with ``excluded_reason='unlabelled_duplicate'`` (never dropped).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    table = image_labels.merge(study_labels, on="study_id", how="left", validate="many_to_one")
    unknown = table["study_class"].isna()
    if unknown.any():
        raise LabelFileError(
            f"{int(unknown.sum())} images belong to studies missing from the study labels, "
            f"e.g. study {table.loc[unknown, 'study_id'].iloc[0]}"
        )
    if patients is not None:
        table = table.merge(patients, on="image_id", how="left", validate="one_to_one")
        table["patient_id"] = table["patient_id"].fillna(table["study_id"])
    else:
        table["patient_id"] = table["study_id"]
    table["has_box"] = table["n_boxes"] > 0
    table["used"] = True
    table["excluded_reason"] = ""
    if duplicates == DUPLICATES_KEEP_BOXED:
        study_has_box = table.groupby("study_id")["has_box"].transform("any")
        drop = (table["study_class"] != "negative") & study_has_box & ~table["has_box"]
        table.loc[drop, "used"] = False
        table.loc[drop, "excluded_reason"] = EXCLUDED_UNLABELLED_DUPLICATE
    return table.reset_index(drop=True)


def load_competition_labels(data_dir, patients: pd.DataFrame | None = None,
                            duplicates: str = DUPLICATES_KEEP_BOXED) -> pd.DataFrame:
    """Both label files of a competition folder -> :func:`build_image_table`."""
    data_dir = Path(data_dir)
    return build_image_table(
        load_image_labels(data_dir / "train_image_level.csv"),
        load_study_labels(data_dir / "train_study_level.csv"),
        patients,
        duplicates,
    )


def assign_folds(table: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> np.ndarray:
    """Fold per row, grouped by ``patient_id`` and stratified by ``study_label``.

    Every image of a patient lands in one fold, so no patient is in both training and validation.
    Deterministic for a seed. Tables with fewer patients than folds get as many folds as patients.
    """
    groups = table["patient_id"].astype(str).to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return np.zeros(len(table), dtype=int)
    from sklearn.model_selection import StratifiedGroupKFold  # here: 1.5 s to import, needed by prepare only

    splitter = StratifiedGroupKFold(n_splits=min(n_folds, n_groups), shuffle=True, random_state=seed)
    folds = np.full(len(table), -1, dtype=int)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(table)), table["study_label"].to_numpy(), groups)):
        folds[valid] = fold
    return folds
