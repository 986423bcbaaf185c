"""The competition's submission format: building, parsing and validating prediction strings.

A prediction string is groups of six tokens ``class confidence x1 y1 x2 y2``. Study rows
(``<study>_study``) carry the four study classes with the dummy box ``0 0 1 1``; image rows
(``<image>_image``) carry ``opacity`` boxes in original DICOM pixels and/or ``none p 0 0 1 1``.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from utils.core.files import atomic_path
from utils.data.boxes import clip_xyxy, valid_box_mask
from utils.data.inputs import PreparationInputError, read_csv_table
from utils.data.labels import IMAGE_CLASSES, IMAGE_SUFFIX, STUDY_CLASSES, STUDY_SUFFIX

HEADER = ["id", "PredictionString"]


class SubmissionError(ValueError):
    """A submission that breaks the format; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], where: str = "submission"):
        self.problems = problems
        self.where = where
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        # One problem is one line (the form every input error takes); several are listed below a count.
        super().__init__(f"{where}: {problems[0]}" if len(problems) == 1
                         else f"{where}: {len(problems)} problem(s)\n{shown}{more}")


@dataclass(frozen=True)
class Prediction:
    """One group of six tokens."""

    label: str
    confidence: float
    box: tuple[float, float, float, float]


def _number(value: float) -> str:
    return f"{float(value):.6g}" if abs(value) < 1e5 else f"{float(value):.1f}"


def study_prediction_string(probabilities: Mapping[str, float]) -> str:
    """``{'negative': p, ...}`` (all four study classes) -> the study row's prediction string."""
    missing = [c for c in STUDY_CLASSES if c not in probabilities]
    if missing:
        raise ValueError(f"study probabilities lack {missing}")
    return " ".join(f"{c} {_number(probabilities[c])} 0 0 1 1" for c in STUDY_CLASSES)


def image_prediction_string(boxes_xyxy_px, scores, none_probability: float | None,
                            width: float, height: float) -> str:
    """Opacity boxes (XYXY_PX in the original DICOM, any order) with scores, plus ``none``.

    Boxes are clipped to the image; boxes that clip to nothing are dropped. ``none_probability=None``
    leaves the none group out.
    """
    boxes = clip_xyxy(boxes_xyxy_px, width, height)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    keep = valid_box_mask(boxes) & np.isfinite(scores)
    parts = [
        f"opacity {_number(s)} {_number(b[0])} {_number(b[1])} {_number(b[2])} {_number(b[3])}"
        for b, s in zip(boxes[keep], np.clip(scores[keep], 0.0, 1.0))
    ]
    if none_probability is not None:
        parts.append(f"none {_number(none_probability)} 0 0 1 1")
    return " ".join(parts)


def parse_prediction_string(text) -> list[Prediction]:
    """A prediction string -> list of :class:`Prediction`. Raises ValueError on a malformed string."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    tokens = str(text).split()
    if len(tokens) % 6:
        raise ValueError(f"{len(tokens)} tokens, not a multiple of 6")
    predictions = []
    for k in range(0, len(tokens), 6):
        label, *numbers = tokens[k:k + 6]
        try:
            values = [float(v) for v in numbers]
        except ValueError as err:
            raise ValueError(f"group {k // 6 + 1} ({' '.join(tokens[k:k + 6])}): non-number") from err
        predictions.append(Prediction(label, values[0], tuple(values[1:])))
    return predictions


def row_kind(identifier: str) -> str | None:
    """``'study'``, ``'image'`` or None from an id's suffix."""
    if identifier.endswith(STUDY_SUFFIX):
        return "study"
    if identifier.endswith(IMAGE_SUFFIX):
        return "image"
    return None


def _string_problems(identifier: str, text) -> list[str]:
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip() == "":
        return [f"{identifier}: empty PredictionString"]
    tokens = str(text).split()
    if len(tokens) % 6:
        return [f"{identifier}: {len(tokens)} tokens, not in groups of six"]
    allowed = STUDY_CLASSES if row_kind(identifier) == "study" else IMAGE_CLASSES
    problems = []
    for k in range(0, len(tokens), 6):
        group = tokens[k:k + 6]
        where = f"{identifier}: group {k // 6 + 1} '{' '.join(group)}'"
        if group[0] not in allowed:
            problems.append(f"{where}: unknown class '{group[0]}' (allowed: {', '.join(allowed)})")
        try:
            conf, x1, y1, x2, y2 = (float(v) for v in group[1:])
        except ValueError:
            problems.append(f"{where}: non-number")
            continue
        if not all(math.isfinite(v) for v in (conf, x1, y1, x2, y2)):
            problems.append(f"{where}: NaN or inf")
            continue
        if not 0.0 <= conf <= 1.0:
            problems.append(f"{where}: confidence {conf} outside [0, 1]")
        if x1 >= x2 or y1 >= y2:
            problems.append(f"{where}: box needs x1 < x2 and y1 < y2")
    return problems


def submission_problems(submission: pd.DataFrame, sample: pd.DataFrame | None = None) -> list[str]:
    """Every format problem of a submission table (empty list = valid).

    With ``sample`` (the sample submission), also missing and extra ids.
    """
    problems = []
    if list(submission.columns) != HEADER:
        return [f"header is {list(submission.columns)}, expected {HEADER}"]
    ids = submission["id"].astype(str)
    for identifier in sorted(set(ids[ids.duplicated()])):
        problems.append(f"{identifier}: duplicate id")
    if sample is not None:
        expected, present = set(sample["id"].astype(str)), set(ids)
        missing, extra = sorted(expected - present), sorted(present - expected)
        if missing:
            problems.append(f"{len(missing)} missing ids, e.g. {', '.join(missing[:5])}")
        if extra:
            problems.append(f"{len(extra)} extra ids, e.g. {', '.join(extra[:5])}")
    for identifier, text in zip(ids, submission["PredictionString"]):
        if row_kind(identifier) is None:
            problems.append(f"{identifier}: id ends in neither {STUDY_SUFFIX} nor {IMAGE_SUFFIX}")
            continue
        problems.extend(_string_problems(identifier, text))
    return problems


def sample_problems(sample: pd.DataFrame) -> list[str]:
    """What makes a sample submission unusable as the list of ids to predict: no ``id`` column,
    duplicate ids, ids that are neither ``<study>_study`` nor ``<image>_image``."""
    if "id" not in sample.columns:
        return [f"no 'id' column (columns: {list(sample.columns)})"]
    if sample.empty:
        return ["no rows: the sample submission lists the ids to predict"]
    ids = sample["id"].astype(str)
    problems = [f"duplicate id {i!r}" for i in sorted(set(ids[ids.duplicated()]))[:20]]
    problems += [f"id {i!r} ends neither in {STUDY_SUFFIX!r} nor {IMAGE_SUFFIX!r}"
                 for i in ids if not (i.endswith(STUDY_SUFFIX) or i.endswith(IMAGE_SUFFIX))][:20]
    return problems


def sample_image_ids(sample: pd.DataFrame) -> list[str]:
    """The image ids of a sample submission's image rows (``<image_id>_image``), in its order."""
    return [i[: -len(IMAGE_SUFFIX)] for i in sample["id"].astype(str) if i.endswith(IMAGE_SUFFIX)]


def read_sample_submission(path) -> pd.DataFrame:
    """The competition's ``sample_submission.csv`` (text columns), checked by :func:`sample_problems`:
    an empty, unreadable or header-only file, or one without ``id``, is an error naming the file."""
    try:
        sample = read_csv_table(path, "sample submission", allow_empty=True)
    except PreparationInputError as err:
        raise SubmissionError([str(err).removeprefix(f"{path}: ")], where=str(path)) from None
    problems = sample_problems(sample)
    if problems:
        raise SubmissionError(problems, where=str(path))
    return sample


def check_output_path(path) -> Path:
    """Raise (``SubmissionError``) when ``path`` cannot receive the submission: a folder, or a parent
    that is not a writable folder. Checked before any prediction, not after hours of it."""
    path = Path(path)
    if path.is_dir():
        raise SubmissionError([f"{path} is a folder; give the submission's file name"], where=str(path))
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SubmissionError([f"cannot write under {existing} (not a writable folder)"], where=str(path))
    return path


def read_submission(path) -> pd.DataFrame:
    """A submission CSV with every field kept as text (an empty string stays empty, not NaN).
    Raises :class:`SubmissionError` naming the file, in one line, for a file that is not such a CSV:
    missing, empty, binary or not UTF-8, unparseable."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(["file not found"], where=str(path))
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as err:
        raise SubmissionError([f"not UTF-8 text (byte {err.start}): binary or another encoding"],
                              where=str(path)) from None
    if "\0" in text:
        raise SubmissionError(["binary content (NUL bytes)"], where=str(path))
    if not text.strip():
        raise SubmissionError(["empty file (expected the header id,PredictionString)"], where=str(path))
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as err:
        raise SubmissionError([f"not a readable CSV ({str(err).strip()})"], where=str(path)) from None


def write_submission(submission: pd.DataFrame, path, sample: pd.DataFrame | None = None) -> Path:
    """Validate, order rows like ``sample`` when given, and write atomically. Raises SubmissionError."""
    if sample is not None and list(submission.columns) == HEADER:
        order = {identifier: k for k, identifier in enumerate(sample["id"].astype(str))}
        submission = submission.assign(_order=submission["id"].map(order).fillna(len(order)))
        submission = submission.sort_values("_order", kind="stable").drop(columns="_order")
    problems = submission_problems(submission, sample)
    if problems:
        raise SubmissionError(problems, where=str(path))
    path = Path(path)
    with atomic_path(path) as temporary:
        submission.to_csv(temporary, index=False)
    return path
