"""Finding a dataset's files: the competition's DICOM tree, a resized copy (``meta.csv`` with the original
sizes beside ``train/`` and ``test/``) and id tables in either spelling. Shared by the preparation of the
training data and the predictor's search for the test images (which imports nothing of training)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

LAYOUT_DICOM = "dicom"
LAYOUT_RESIZED = "resized"
RESIZED_META = "meta.csv"
RESIZED_SUFFIXES = (".png", ".jpg", ".jpeg")
# Column names accepted in id tables (ours, then the header-derived style of the public solutions'
# train_meta.csv / test_meta.csv), by the name they get here.
ID_COLUMNS = {"image_id": ("image_id", "imageid"), "study_id": ("study_id", "studyid", "StudyInstanceUID"),
              "series_id": ("series_id", "seriesid"), "patient_id": ("patient_id", "patientid")}


def find_dicoms(split_dir) -> list[Path]:
    """Every ``<study>/<series>/<image>.dcm`` under a split folder, sorted, one per image id: an id
    found twice (two series of a study holding the same image) is logged with both paths and the
    first in sorted order is kept, so every run makes the same choice."""
    kept: dict[str, Path] = {}
    for path in sorted(Path(split_dir).glob("*/*/*.dcm")):
        if path.stem in kept:
            log.warning("image id %s found twice: keeping %s, ignoring %s", path.stem, kept[path.stem], path)
            continue
        kept[path.stem] = path
    return sorted(kept.values())


def unreadable_folders(split_dir) -> list[tuple[str, str]]:
    """``(folder, reason)`` of every study or series folder under a split that cannot be listed (no
    permission, an I/O error): :func:`find_dicoms` sees no image in them, so they are listed instead of
    their images silently missing."""
    failures: list[tuple[str, str]] = []

    def subfolders(folder) -> list[str]:
        try:
            with os.scandir(folder) as entries:
                return [entry.path for entry in entries if entry.is_dir()]
        except OSError as err:
            failures.append((str(folder), f"folder cannot be read ({err.strerror or err}): its images are left out"))
            return []

    for study in subfolders(split_dir):
        for series in subfolders(study):
            subfolders(series)
    return failures


class PreparationInputError(ValueError):
    """Input preparation cannot start from: names the file or folder and the reason."""


def is_resized_copy(data_dir) -> bool:
    """Whether ``data_dir`` has a resized copy's ``meta.csv`` (with ``image_id``, ``dim0``, ``dim1``)."""
    meta = Path(data_dir) / RESIZED_META
    if not meta.is_file():
        return False
    try:
        columns = pd.read_csv(meta, nrows=0).columns
    except (ValueError, OSError, pd.errors.ParserError):
        return False
    return {"image_id", "dim0", "dim1"} <= set(columns)


def detect_layout(data_dir) -> str:
    """``"resized"`` for a resized copy (``meta.csv`` with ``dim0``/``dim1`` beside ``train/``),
    ``"dicom"`` for the competition's folder (``train/<study>/<series>/*.dcm``); otherwise raises
    :class:`PreparationInputError` saying what was looked for."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PreparationInputError(f"{data_dir}: not a folder")
    if is_resized_copy(data_dir):
        return LAYOUT_RESIZED
    if (data_dir / "train").is_dir() and next((data_dir / "train").glob("*/*/*.dcm"), None) is not None:
        return LAYOUT_DICOM
    raise PreparationInputError(
        f"{data_dir}: neither the competition's DICOM folder (train/<study>/<series>/<image>.dcm) nor a resized "
        f"copy ({RESIZED_META} with image_id, dim0, dim1 beside train/<image_id>.jpg|png)")


def read_csv_table(path, what: str = "table", allow_empty: bool = False) -> pd.DataFrame:
    """A CSV file as text columns; a missing, 0-byte, unparseable or (unless ``allow_empty``) header-only
    file is a :class:`PreparationInputError` naming the file and the reason, never pandas' own error."""
    path = Path(path)
    if not path.is_file():
        raise PreparationInputError(f"{path}: {what} not found")
    try:
        frame = pd.read_csv(path, dtype=str)
    except pd.errors.EmptyDataError:
        raise PreparationInputError(f"{path}: {what} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise PreparationInputError(f"{path}: {what} is not a readable CSV table ({err})".replace("\n", " ")) from None
    if frame.empty and not allow_empty:
        raise PreparationInputError(f"{path}: {what} has a header but no rows (columns: {list(frame.columns)})")
    return frame


def read_id_table(path, required: tuple[str, ...], optional: tuple[str, ...] = (), what: str = "id table"
                  ) -> pd.DataFrame:
    """A CSV of ids -> columns ``required`` (+ those of ``optional`` present), named as in
    :data:`ID_COLUMNS` whichever accepted spelling the file uses; rows missing a required id dropped,
    one row per first column. Raises :class:`PreparationInputError` naming the file."""
    path = Path(path)
    frame = read_csv_table(path, what)
    renamed = {}
    for ours in (*required, *optional):
        found = next((c for c in ID_COLUMNS[ours] if c in frame.columns), None)
        if found is None and ours in required:
            raise PreparationInputError(
                f"{path}: needs a column {' or '.join(ID_COLUMNS[ours])}; has {list(frame.columns)}")
        if found is not None:
            renamed[found] = ours
    frame = frame[list(renamed)].rename(columns=renamed).dropna(subset=list(required))
    return frame.drop_duplicates(required[0]).reset_index(drop=True)


def _resized_sizes(meta_path: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]], set]:
    """The rows of a resized copy's meta.csv with usable original sizes, a failure per other row, and
    the ids of those other rows."""
    dims = frame[["dim0", "dim1"]].apply(pd.to_numeric, errors="coerce")
    bad = dims.isna().any(axis=1) | (dims <= 0).any(axis=1)
    failures = [(str(meta_path), f"image {i}: original size dim0={h!r}, dim1={w!r} missing or not positive")
                for i, h, w in frame.loc[bad, ["image_id", "dim0", "dim1"]].itertuples(index=False)]
    good = frame[~bad].assign(original_height=dims["dim0"][~bad].astype(int),
                              original_width=dims["dim1"][~bad].astype(int))
    return good, failures, set(frame.loc[bad, "image_id"])


def find_resized_images(folder) -> dict[str, Path]:
    """``{image_id: path}`` of the PNG/JPEG files directly in ``folder`` (a resized copy's split)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PreparationInputError(f"{folder}: image folder not found")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in RESIZED_SUFFIXES}


def read_resized_meta(data_dir, split: str) -> tuple[pd.DataFrame, list[tuple[str, str]], set]:
    """A resized copy's ``meta.csv`` rows of ``split`` (all rows without a ``split`` column):
    ``image_id, original_height, original_width``, plus a (file, reason) failure per unusable row and
    the ids of those rows."""
    meta_path = Path(data_dir) / RESIZED_META
    if not meta_path.is_file():
        raise PreparationInputError(f"{meta_path}: not found (a resized copy lists original sizes there)")
    frame = pd.read_csv(meta_path, dtype={"image_id": str})
    missing = {"image_id", "dim0", "dim1"} - set(frame.columns)
    if missing:
        raise PreparationInputError(f"{meta_path}: missing columns {sorted(missing)}; has {list(frame.columns)}")
    if "split" in frame.columns:
        frame = frame[frame["split"].astype(str) == split]
    frame = frame.drop_duplicates("image_id")
    good, failures, unusable = _resized_sizes(meta_path, frame)
    return good[["image_id", "original_height", "original_width"]].reset_index(drop=True), failures, unusable
