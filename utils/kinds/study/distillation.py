"""Self-distillation of the study classifier: each training image learns its label and a teacher's
probabilities of it (the study classes and "none"), the teacher being an earlier run's out-of-fold
predictions (``oof_predictions.csv``: no teacher model saw the image it labels).

The loss is ``(hard loss + k * soft loss) / (1 + k)``. Cross-entropy and BCE are linear in their target,
so that mixture is the loss against the mixed target ``(label + k * teacher) / (1 + k)``: the mixed
target is what this module writes into the table (``study_probs`` and ``none``), and the network's
soft-target path (the one pseudo-labels use) trains on it unchanged. ``temperature`` < 1 sharpens the
teacher's probabilities first (``p ** (1 / T)``, renormalised), > 1 softens them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from utils.data.labels import STUDY_CLASSES
from utils.data.predictions import NONE_PROB_COLUMN, STUDY_PROB_COLUMNS, PredictionFileError, read_predictions

log = logging.getLogger(__name__)


def sharpen(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of class probabilities ``(N, C)`` raised to ``1 / temperature`` and renormalised (1: unchanged)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    powered = probs ** (1.0 / temperature)
    return powered / powered.sum(axis=1, keepdims=True)


def read_teacher(path: Path | str) -> pd.DataFrame:
    """The teacher's probabilities per image (index image_id; the four study columns and none), the mean
    over its rows where several models predicted an image. Raises :class:`PredictionFileError` naming the
    file when it is not a predictions table with study probabilities."""
    try:
        frame = read_predictions(Path(path))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PredictionFileError(f"{path}: not a predictions CSV ({str(err).splitlines()[0]})") from None
    columns = [*STUDY_PROB_COLUMNS, NONE_PROB_COLUMN]
    rows = frame.dropna(subset=columns)
    if rows.empty:
        raise PredictionFileError(f"{path}: no row with study and none probabilities (a classifier's predictions?)")
    return rows.groupby("image_id")[columns].mean()


def distilled_targets(study_labels, none_labels, teacher_study: np.ndarray, teacher_none: np.ndarray,
                      weight: float, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """``(study probabilities (N, 4), none (N,))``: the labels (class indices; none in [0, 1]) mixed with
    the teacher's probabilities sharpened at ``temperature``, ``(label + weight * teacher) / (1 + weight)``."""
    hard_study = np.eye(len(STUDY_CLASSES))[np.asarray(study_labels, dtype=np.int64)]
    soft_study = sharpen(teacher_study, temperature)
    none = np.clip(np.asarray(teacher_none, dtype=np.float64), 1e-12, 1.0 - 1e-12)
    soft_none = sharpen(np.stack([none, 1.0 - none], axis=1), temperature)[:, 0]
    mix = 1.0 / (1.0 + weight)
    return ((hard_study + weight * soft_study) * mix,
            (np.asarray(none_labels, dtype=np.float64) + weight * soft_none) * mix)


def add_teacher_targets(table: pd.DataFrame, teacher: pd.DataFrame, weight: float, temperature: float,
                        source: str = "teacher") -> int:
    """Mixes the teacher's probabilities into the targets of ``table``'s labelled images (a pseudo-labelled
    image keeps its own soft target); images the teacher did not predict keep their label (as one-hot
    ``study_probs``, so every item of a batch has one). Returns how many images got a teacher target;
    raises ValueError when none did (a teacher of other images)."""
    pseudo = table["pseudo"].to_numpy(dtype=bool) if "pseudo" in table else np.zeros(len(table), dtype=bool)
    known = table["image_id"].isin(teacher.index).to_numpy() & ~pseudo
    if not known.any():
        raise ValueError(f"{source}: predicts none of the {len(table)} training images (teacher of another "
                         "prepared folder?)")
    rows = teacher.loc[table.loc[known, "image_id"]]
    labels = [t["study"] for t in table.loc[known, "targets"]]
    nones = [t["none"] for t in table.loc[known, "targets"]]
    study, none = distilled_targets(labels, nones, rows[list(STUDY_PROB_COLUMNS)].to_numpy(),
                                    rows[NONE_PROB_COLUMN].to_numpy(), weight, temperature)
    eye = np.eye(len(STUDY_CLASSES))
    for target in table.loc[~known & ~pseudo, "targets"]:
        target.setdefault("study_probs", eye[target["study"]])
    for target, probs, none_target in zip(table.loc[known, "targets"], study, none):
        target.update(study_probs=probs, none=float(none_target))
    missing = int((~known & ~pseudo).sum())
    log.info("distillation: %d images learn %s (weight %g, temperature %g)%s", int(known.sum()), source, weight,
             temperature, f"; {missing} it did not predict keep their label" if missing else "")
    return int(known.sum())
