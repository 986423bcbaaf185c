"""The prepared training table (``meta.csv``): its columns, the pseudo-labelled rows' columns, how it is
read at one image size (:func:`read_meta`; pseudo-labelled rows left out unless asked) and split into
folds (:func:`select_folds`, :func:`fold_split`), where pseudo-labelled rows are kept out of every score."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

META_COLUMNS = ["image_id", "study_id", "series_id", "patient_id", "original_height", "original_width", "fold",
                "study_class", "study_label", "boxes", "n_boxes", "has_box", "used", "excluded_reason"]
# Rows a pseudo-label stage adds (train/pseudo_label.py): the marker, the round-one fold whose models
# labelled the image (only that fold's round two trains on it), the soft study target (JSON list of the
# four STUDY_CLASSES probabilities), the soft image "none" target, and whether its boxes are a label
# (false: detectors skip the image, the study classifier still learns its soft targets). fold is -1.
PSEUDO_COLUMNS = ["pseudo", "pseudo_fold", "pseudo_study", "pseudo_none", "pseudo_boxes"]
PSEUDO_FOLD = -1


def read_meta(meta_csv, image_size: int, pseudo: bool = False) -> pd.DataFrame:
    """A prepared ``meta.csv`` for training at ``image_size``: ``used`` as bool and the absolute path of
    the smallest prepared size at least ``image_size`` in ``image_path`` (else the largest, with a
    warning: the images are upscaled). Raises ``FileNotFoundError``/``ValueError`` naming the file.

    Pseudo-labelled rows (:data:`PSEUDO_COLUMNS`, written by train/pseudo_label.py) are left out unless
    ``pseudo``: only training reads them, so no report, score or calibration can ever see one. With
    ``pseudo`` their columns are typed (``pseudo_study`` a (4,) array); ``pseudo`` is always a column."""
    meta_csv = Path(meta_csv)
    if not meta_csv.is_file():
        raise FileNotFoundError(f"{meta_csv}: not found; run train/prepare.py first")
    table = pd.read_csv(meta_csv, dtype={"image_id": str, "study_id": str, "series_id": str, "patient_id": str},
                        keep_default_na=False)
    sizes = sorted(int(c.split("_", 1)[1]) for c in table.columns if c.startswith("path_"))
    if not sizes:
        raise ValueError(f"{meta_csv}: no path_<size> columns; run train/prepare.py first")
    table["pseudo"] = _as_bool(table["pseudo"]) if "pseudo" in table else False
    if not pseudo:
        table = table[~table["pseudo"]].drop(columns=[c for c in PSEUDO_COLUMNS[1:] if c in table])
        table = table.reset_index(drop=True)
    elif "pseudo_fold" in table:
        table = _typed_pseudo_columns(table, meta_csv)
    fitting = [s for s in sizes if s >= image_size]
    if not fitting:
        log.warning("%s: largest prepared size %d is below %d (images are upscaled)", meta_csv, sizes[-1], image_size)
    column = f"path_{fitting[0] if fitting else sizes[-1]}"
    table["image_path"] = [meta_csv.parent / p for p in table[column]]
    table["used"] = _as_bool(table["used"])
    return table


def _as_bool(column: pd.Series) -> pd.Series:
    return column.astype(str).str.lower().isin(("true", "1"))


def _typed_pseudo_columns(table: pd.DataFrame, meta_csv) -> pd.DataFrame:
    """The pseudo columns of a merged meta.csv as numbers (real rows: fold -1, none NaN, no study)."""
    pseudo = table["pseudo"]
    try:
        table["pseudo_fold"] = [int(f) if p else -1 for f, p in zip(table["pseudo_fold"], pseudo)]
        table["pseudo_none"] = [float(v) if p else float("nan") for v, p in zip(table["pseudo_none"], pseudo)]
        table["pseudo_study"] = [np.asarray(json.loads(v), dtype=np.float64) if p else None
                                 for v, p in zip(table["pseudo_study"], pseudo)]
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{meta_csv}: pseudo-labelled rows need {PSEUDO_COLUMNS[1:]} ({err})") from None
    table["pseudo_boxes"] = _as_bool(table["pseudo_boxes"]) & pseudo
    return table


def _real(table: pd.DataFrame) -> pd.Series:
    """Which rows carry real labels (not pseudo-labelled)."""
    return ~table["pseudo"].astype(bool) if "pseudo" in table else pd.Series(True, index=table.index)


def select_folds(table: pd.DataFrame, folds: list[int] | None, source) -> list[int]:
    """``folds`` checked against the folds of ``table``'s real rows (None: all of them, sorted)."""
    available = sorted(int(f) for f in table.loc[_real(table), "fold"].unique())
    chosen = list(folds) if folds is not None else available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"{source}: folds {unknown} not in meta.csv (folds there: {available})")
    return chosen


def fold_split(table: pd.DataFrame, fold: int, source) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(train, val, held_out)`` of one fold: the used images of the other folds, the used images of
    this fold, and every image of this fold (un-annotated duplicates too: they get out-of-fold
    predictions). Pseudo-labelled rows train only the fold whose round-one models labelled them
    (``pseudo_fold``) and are never validated or held out. Raises ``ValueError`` naming ``source``
    when training or validation is empty."""
    real = _real(table)
    in_fold = real & (table["fold"].astype(int) == fold)
    pseudo = ~real & (table["pseudo_fold"].astype(int) == fold) if (~real).any() else ~real
    train = table[((real & ~in_fold) | pseudo) & table["used"]].reset_index(drop=True)
    val = table[in_fold & table["used"]].reset_index(drop=True)
    if train.empty or val.empty:
        raise ValueError(f"{source}: fold {fold} leaves {len(train)} training and {len(val)} validation images")
    return train, val, table[in_fold].reset_index(drop=True)
