"""Preparation: decode every training image once into lossless PNGs per size, plus meta.csv (the
decoding and its cache: :mod:`utils.data.decoding_cache`; the table and its folds:
:mod:`utils.data.training_table`).

Two kinds of input, recognised by their contents (:func:`detect_layout`):

- the competition's DICOM folder (``train/<study>/<series>/<image>.dcm`` + the label CSVs);
- a resized copy of it as most competitors train on (``train/<image_id>.jpg|png``, ``meta.csv`` with
  ``image_id, dim0, dim1[, split]`` giving each image's ORIGINAL height and width, + the label CSVs).
  Such copies are square resizes of the whole radiograph, exactly like the PNGs written here, so the
  boxes stay in original pixels in meta.csv and every later stage scales them per axis as usual.

Output folder (the same for both):
    images_<size>/<image_id>.png   one per requested size (square resize, area averaging)
    headers.jsonl                  one line per decoded image (ids from its header, original size, a
                                   hash of its pixels); what makes a stopped run resumable
    failures.csv                   path,reason for every file that could not be read (skipped)
    meta.csv                       one row per labelled image: ids, patient, original size, fold,
                                   study class, boxes (XYXY_PX JSON), used/excluded, path per size
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.files import atomic_path, write_csv_atomic
from utils.data.boxes import as_boxes, kaggle_xywh_to_xyxy
from utils.data.decoding_cache import (
    DecodedImage,
    decode_files,
    decode_split,
    image_path,
)
from utils.data.inputs import (
    LAYOUT_RESIZED,
    RESIZED_META,
    detect_layout,
    find_resized_images,
    read_id_table,
    read_resized_meta,
    unreadable_folders,
)
from utils.data.labels import (
    DUPLICATES_KEEP_BOXED,
    IMAGE_SUFFIX,
    STUDY_SUFFIX,
    assign_folds,
    boxes_to_json,
    load_competition_labels,
    load_image_labels,
    strip_suffix,
)
from utils.data.training_table import (
    META_COLUMNS,
)

RSNA_LABELS = "stage_2_train_labels.csv"
RSNA_IMAGES = "stage_2_train_images"
log = logging.getLogger(__name__)


def prepare_competition(data_dir, out_dir, sizes=(1024,), workers: int = 1, n_folds: int = 5, seed: int = 42,
                        duplicates: str = DUPLICATES_KEEP_BOXED, patients=None, progress: bool = True) -> pd.DataFrame:
    """The whole stage for a competition folder's train split; returns and writes meta.csv. The
    patient comes from each DICOM header (``patients``, an image -> patient table, overrides it)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    decoded, failures = decode_split(data_dir / "train", out_dir, sizes, workers, progress)
    failures = unreadable_folders(data_dir / "train") + failures
    if patients:
        table = read_patients(patients)
        patient_of = dict(zip(table["image_id"], table["patient_id"]))
        decoded = [replace(d, patient_id=str(patient_of.get(d.image_id, d.patient_id))) for d in decoded]
    return _finish_meta(data_dir, out_dir, sizes, decoded, failures, n_folds, seed, duplicates)


def read_patients(path) -> pd.DataFrame:
    """An image -> patient table (``image_id``/``imageid``, ``patient_id``/``patientid``, optional
    ``series_id``) -> columns ``image_id, patient_id[, series_id]``, one row per image."""
    return read_id_table(path, ("image_id", "patient_id"), ("series_id",), what="patient table")


def prepare_resized(data_dir, out_dir, sizes=(256,), workers: int = 1, n_folds: int = 5, seed: int = 42,
                    duplicates: str = DUPLICATES_KEEP_BOXED, patients=None, progress: bool = True) -> pd.DataFrame:
    """The whole stage for a resized copy's train split; returns and writes meta.csv (same columns as
    :func:`prepare_competition`). ``patients``: an optional image -> patient table
    (:func:`read_patients`); the copies carry no patient, so without one a study stands for its
    patient (a patient's other studies may then fall in another fold; a warning says so).

    Problems that concern one image go to failures.csv (file, reason) and that image is left out:
    listed in meta.csv but no file, a file without a meta.csv row, a label row without an image, an
    original size missing or zero, an unreadable image."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes_table, failures, bad_size = read_resized_meta(data_dir, "train")
    files = find_resized_images(data_dir / "train")
    labels = load_image_labels(data_dir / "train_image_level.csv")
    listed = set(sizes_table["image_id"])
    failures += [(str(files[i]), f"no {RESIZED_META} row (original size unknown)")
                 for i in sorted(set(files) - listed - bad_size)]
    failures += [(str(data_dir / "train" / i), f"listed in {RESIZED_META} but no image file")
                 for i in sorted(listed - set(files))]
    failures += [(str(data_dir / "train_image_level.csv"), f"image {i}: label row without an image")
                 for i in sorted(set(labels["image_id"]) - set(files))]
    patient_table = read_patients(patients) if patients else None
    if patient_table is None:
        log.warning("%s: no patient table; each study stands for its patient in the folds", data_dir)
    study_of = dict(zip(labels["image_id"], labels["study_id"]))
    patient_of = {} if patient_table is None else dict(zip(patient_table["image_id"], patient_table["patient_id"]))
    series_of = ({} if patient_table is None or "series_id" not in patient_table
                 else dict(zip(patient_table["image_id"], patient_table["series_id"])))
    known = {}
    for row in sizes_table.itertuples(index=False):
        if row.image_id in files and row.image_id in study_of:
            study = study_of[row.image_id]
            known[row.image_id] = DecodedImage(row.image_id, study, str(series_of.get(row.image_id, "")),
                                               str(patient_of.get(row.image_id, study)),
                                               int(row.original_height), int(row.original_width))
    decoded, decode_failures = decode_files([files[i] for i in known], out_dir, sizes, workers, progress, known)
    # The table is the authority (a resumed run's headers.jsonl may predate a new patient table);
    # an image no longer listed is left out.
    decoded = [known[d.image_id] for d in decoded if d.image_id in known]
    return _finish_meta(data_dir, out_dir, sizes, decoded, failures + decode_failures, n_folds, seed, duplicates)


def write_resized_subset(source, out, n_train: int, test_table=None, n_test: int = 0) -> Path:
    """A smaller resized copy of ``source`` in ``out`` (for tests and timed checks): the first
    ``n_train // 2`` training images with boxes and as many without, their label rows and studies,
    and the first ``n_test`` test images of ``test_table`` (copied to ``out/test_meta.csv``)."""
    import shutil

    source, out = Path(source), Path(out)
    labels = pd.read_csv(source / "train_image_level.csv", dtype=str)
    boxed = labels[labels["boxes"].notna()].iloc[: n_train // 2]
    chosen = pd.concat([boxed, labels[labels["boxes"].isna()].iloc[: n_train - len(boxed)]])
    ids = {strip_suffix(i, IMAGE_SUFFIX) for i in chosen["id"]}
    if test_table is not None and n_test:
        tests = pd.read_csv(test_table, dtype=str).iloc[:n_test]
        out.mkdir(parents=True, exist_ok=True)
        tests.to_csv(out / "test_meta.csv", index=False)
        ids |= set(read_id_table(out / "test_meta.csv", ("image_id",), what="test image table")["image_id"])
    meta = pd.read_csv(source / RESIZED_META, dtype={"image_id": str})
    meta = meta[meta["image_id"].isin(ids)]
    files = {**find_resized_images(source / "train"),
             **(find_resized_images(source / "test") if (source / "test").is_dir() else {})}
    for split in ("train", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for image_id in meta.loc[meta.get("split", "train") == split, "image_id"]:
            if image_id in files:
                shutil.copy(files[image_id], out / split)
    meta.to_csv(out / RESIZED_META, index=False)
    chosen.to_csv(out / "train_image_level.csv", index=False)
    studies = pd.read_csv(source / "train_study_level.csv", dtype=str)
    studies[[strip_suffix(i, STUDY_SUFFIX) in set(chosen["StudyInstanceUID"]) for i in studies["id"]]].to_csv(
        out / "train_study_level.csv", index=False)
    return out


def _finish_meta(data_dir: Path, out_dir: Path, sizes, decoded: list[DecodedImage], failures, n_folds: int,
                 seed: int, duplicates: str) -> pd.DataFrame:
    """Labels joined to the decoded images, folds, paths -> meta.csv (and failures.csv)."""
    write_csv_atomic(pd.DataFrame(failures, columns=["path", "reason"]), out_dir / "failures.csv")
    headers = pd.DataFrame([asdict(d) for d in decoded],
                           columns=[f for f in DecodedImage.__dataclass_fields__])
    patients = headers.drop(columns="study_id")
    table = load_competition_labels(data_dir, patients, duplicates)
    missing = table["original_height"].isna()
    table.loc[missing, "used"] = False
    table.loc[missing, "excluded_reason"] = "no_decoded_image"
    table["fold"] = assign_folds(table, n_folds, seed)
    table["boxes"] = [boxes_to_json(b) for b in table["boxes"]]
    for size in sizes:
        table[f"path_{size}"] = [
            "" if m else str(image_path(out_dir, size, i).relative_to(out_dir))
            for i, m in zip(table["image_id"], missing)
        ]
    return _write_meta(table, sizes, out_dir)


def prepare_data(data_dir, out_dir, sizes=(1024,), workers: int = 1, n_folds: int = 5, seed: int = 42,
                 duplicates: str = DUPLICATES_KEEP_BOXED, patients=None, progress: bool = True) -> pd.DataFrame:
    """Either kind of input (:func:`detect_layout`) -> the prepared folder and its meta.csv."""
    if detect_layout(data_dir) == LAYOUT_RESIZED:
        return prepare_resized(data_dir, out_dir, sizes, workers, n_folds, seed, duplicates, patients, progress)
    return prepare_competition(data_dir, out_dir, sizes, workers, n_folds, seed, duplicates, patients, progress)


def _write_meta(table: pd.DataFrame, sizes, out_dir: Path) -> pd.DataFrame:
    table["original_height"] = table["original_height"].astype("Int64")
    table["original_width"] = table["original_width"].astype("Int64")
    table = table[META_COLUMNS + [f"path_{s}" for s in sizes]]
    with atomic_path(out_dir / "meta.csv") as temporary:
        table.to_csv(temporary, index=False)
    return table


def load_rsna_boxes(labels_csv) -> dict[str, np.ndarray]:
    """RSNA Pneumonia's ``stage_2_train_labels.csv`` (one row per box; ``Target`` 0 rows have no
    coordinates) -> ``{patientId: XYXY_PX boxes}``, every patient present."""
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{labels_csv}: RSNA label file not found")
    frame = pd.read_csv(labels_csv, dtype={"patientId": str})
    missing = {"patientId", "x", "y", "width", "height", "Target"} - set(frame.columns)
    if missing:
        raise ValueError(f"{labels_csv}: missing columns {sorted(missing)}")
    boxes: dict[str, list] = {}
    for row in frame.itertuples(index=False):
        entry = boxes.setdefault(row.patientId, [])
        if int(row.Target) == 1:
            values = [row.x, row.y, row.width, row.height]
            if not np.isfinite(np.asarray(values, dtype=float)).all():
                raise ValueError(f"{labels_csv}: patient {row.patientId} has Target 1 without a box")
            entry.append(values)
    return {patient: kaggle_xywh_to_xyxy(items) if items else as_boxes([]) for patient, items in boxes.items()}


def prepare_rsna(rsna_dir, out_dir, sizes=(512,), workers: int = 1, n_folds: int = 5, seed: int = 42,
                 progress: bool = True) -> pd.DataFrame:
    """RSNA Pneumonia (pre-training for the Faster R-CNN, report section 2.2) prepared like the
    competition: PNGs per size and a meta.csv of the same columns, one image per patient, boxes as
    opacities; "study" columns are filled so the same training code reads it (typical: has a box)."""
    rsna_dir, out_dir = Path(rsna_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    boxes = load_rsna_boxes(rsna_dir / RSNA_LABELS)
    paths = [rsna_dir / RSNA_IMAGES / f"{patient}.dcm" for patient in sorted(boxes)]
    absent = [p for p in paths if not p.is_file()]
    for path in absent:
        log.warning("skipped %s: listed in %s but not found", path, RSNA_LABELS)
    decoded, failures = decode_files([p for p in paths if p.is_file()], out_dir, sizes, workers, progress)
    failures += [(str(p), "file not found") for p in absent]
    write_csv_atomic(pd.DataFrame(failures, columns=["path", "reason"]), out_dir / "failures.csv")
    rows = []
    for image in sorted((d for d in decoded if d.image_id in boxes), key=lambda d: d.image_id):
        image_boxes = boxes[image.image_id]  # (a cached image no longer in the labels is left out)
        positive = len(image_boxes) > 0
        rows.append({"image_id": image.image_id, "study_id": image.image_id, "series_id": image.image_id,
                     "patient_id": image.image_id, "original_height": image.original_height,
                     "original_width": image.original_width, "study_class": "typical" if positive else "negative",
                     "study_label": int(positive), "boxes": boxes_to_json(image_boxes), "n_boxes": len(image_boxes),
                     "has_box": positive, "used": True, "excluded_reason": ""})
    table = pd.DataFrame(rows, columns=[c for c in META_COLUMNS if c != "fold"])
    table["fold"] = assign_folds(table, n_folds, seed) if len(table) else []
    for size in sizes:
        table[f"path_{size}"] = [str(image_path(out_dir, size, i).relative_to(out_dir)) for i in table["image_id"]]
    return _write_meta(table, sizes, out_dir)
