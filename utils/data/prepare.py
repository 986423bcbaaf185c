"""Preparation: decode every training image once into lossless PNGs per size, plus meta.csv.

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

import errno
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from utils.core.files import atomic_path, describe_write_failure, remove_stale_temporaries, write_csv_atomic
from utils.core.interrupt import dies_with_this_process
from utils.data.boxes import as_boxes, kaggle_xywh_to_xyxy
from utils.data.dicom import MAX_PIXELS, DicomReadError, read_radiograph, resize_image
from utils.data.inputs import (
    LAYOUT_RESIZED,
    RESIZED_META,
    detect_layout,
    find_dicoms,
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

META_COLUMNS = ["image_id", "study_id", "series_id", "patient_id", "original_height", "original_width", "fold",
                "study_class", "study_label", "boxes", "n_boxes", "has_box", "used", "excluded_reason"]
# Rows a pseudo-label stage adds (train/pseudo_label.py): the marker, the round-one fold whose models
# labelled the image (only that fold's round two trains on it), the soft study target (JSON list of the
# four STUDY_CLASSES probabilities), the soft image "none" target, and whether its boxes are a label
# (false: detectors skip the image, the study classifier still learns its soft targets). fold is -1.
PSEUDO_COLUMNS = ["pseudo", "pseudo_fold", "pseudo_study", "pseudo_none", "pseudo_boxes"]
PSEUDO_FOLD = -1
RSNA_LABELS = "stage_2_train_labels.csv"
RSNA_IMAGES = "stage_2_train_images"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedImage:
    image_id: str
    study_id: str
    series_id: str
    patient_id: str
    original_height: int
    original_width: int
    # What finds a training image under another name or a link (the pseudo-label stage refuses it): a
    # hash of its decoded pixels at the largest prepared size, and a DICOM's own UIDs ("" for PNG/JPEG).
    # A line of headers.jsonl written before they existed ("") is decoded again.
    pixel_hash: str = ""
    header_image_uid: str = ""
    header_study_uid: str = ""


HEADERS_FILE = "headers.jsonl"  # a prepared folder's one line per decoded image


def pixel_hash(pixels: np.ndarray) -> str:
    """A content hash of decoded pixels (shape, type and values): equal for byte-identical files, hard
    links and lossless re-encodings of one image; a resize or a lossy re-encoding changes it."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{pixels.shape}{pixels.dtype}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def image_path(out_dir: Path, size: int, image_id: str) -> Path:
    return Path(out_dir) / f"images_{size}" / f"{image_id}.png"


class PreparedWriteError(OSError):
    """Writing into the prepared folder failed (a full disk, a quota, no permission): the run stops,
    with what is already written kept; the image itself is not at fault. Its text is one line: the
    path, the reason and the space left."""

    def __str__(self) -> str:
        return str(self.strerror)


def _write_png_atomic(path: Path, pixels) -> None:
    try:
        with atomic_path(path) as temporary:
            if not cv2.imwrite(str(temporary), pixels):  # OpenCV says only False: a full disk, mostly
                raise OSError(errno.EIO, "the PNG could not be written", str(path))
    except (OSError, cv2.error) as err:
        error = err if isinstance(err, OSError) else OSError(errno.EIO, str(err).strip(), str(path))
        raise PreparedWriteError(error.errno, describe_write_failure(error, path)) from None


def decode_one(path: Path, out_dir: Path, sizes: tuple[int, ...], known: DecodedImage | None = None) -> DecodedImage:
    """Decode one radiograph and write its PNGs. The image id is the file name (as in the competition).

    A DICOM's ids come from its folders and header; an image of a resized copy (PNG/JPEG) carries
    none, so its ids and ORIGINAL size come in ``known``."""
    # Decode once at the largest size (the reader resizes before its lookup table, which is the fast
    # path); smaller sizes are area-averaged from that.
    radiograph = read_radiograph(path, max(sizes), max_pixels=MAX_PIXELS)
    image_id = path.stem
    for size in sizes:
        _write_png_atomic(image_path(out_dir, size, image_id), resize_image(radiograph.pixels, size))
    header = radiograph.header
    content = {"pixel_hash": pixel_hash(radiograph.pixels),
               "header_image_uid": header.image_uid if header is not None else "",
               "header_study_uid": header.study_uid if header is not None else ""}
    if known is not None:
        return replace(known, **content)
    return DecodedImage(
        image_id=image_id,
        study_id=path.parent.parent.name,
        series_id=path.parent.name,
        patient_id=(header.patient_id if header is not None else "") or path.parent.parent.name,
        original_height=radiograph.original_height,
        original_width=radiograph.original_width,
        **content,
    )


def _decode_task(args):
    path, out_dir, sizes, known = args
    try:
        return path, decode_one(path, out_dir, sizes, known), None
    except PreparedWriteError:
        raise  # the destination's fault: stops the run (the image is fine)
    except DicomReadError as err:
        return path, None, err.reason
    except Exception as err:  # one bad file never stops the run; it is reported with its reason
        return path, None, f"{type(err).__name__}: {err}"


def read_decoded(out_dir) -> tuple[list[DecodedImage], Path]:
    """Every complete record of a prepared folder's ``headers.jsonl`` (lines cut short are skipped), and
    the file's path."""
    headers_file = Path(out_dir) / HEADERS_FILE
    if not headers_file.is_file():
        raise FileNotFoundError(f"{headers_file}: not found (is {out_dir} a folder train/prepare.py wrote?)")
    records = []
    for line in headers_file.read_text().splitlines():
        try:
            records.append(DecodedImage(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return records, headers_file


def _load_done(out_dir: Path, sizes) -> dict[str, DecodedImage]:
    done = {}
    # a line cut short by a killed run is not read: that image is decoded again
    if (Path(out_dir) / HEADERS_FILE).is_file():
        for record in read_decoded(out_dir)[0]:
            if record.pixel_hash and all(image_path(out_dir, s, record.image_id).is_file() for s in sizes):
                done[record.image_id] = record
    return done


Decoded = tuple[list["DecodedImage"], list[tuple[str, str]]]  # (decoded images, (path, reason) failures)


NOT_UTF8 = "its file or folder name is not valid UTF-8: rename it"


def is_utf8_name(path: Path) -> bool:
    """Whether ``path`` is text (a name that is not UTF-8 holds surrogates on Linux)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: Path) -> str:
    """``path`` with the bytes that are not UTF-8 written as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def decode_split(split_dir, out_dir, sizes, workers: int = 1, progress: bool = True) -> Decoded:
    """Decode every DICOM of a split (skipping ones already done) -> (decoded, failures)."""
    return decode_files(find_dicoms(split_dir), out_dir, sizes, workers, progress)


def decode_files(paths, out_dir, sizes, workers: int = 1, progress: bool = True,
                 known: dict[str, DecodedImage] | None = None) -> Decoded:
    """Decode radiographs named ``<image_id>.<suffix>`` (skipping ones already done) -> (decoded,
    failures). ``known`` gives the ids and original size per image id where the file cannot (resized
    copies)."""
    out_dir = Path(out_dir)
    sizes = tuple(int(s) for s in sizes)
    for size in sizes:
        (out_dir / f"images_{size}").mkdir(parents=True, exist_ok=True)
        if removed := remove_stale_temporaries(out_dir / f"images_{size}"):
            log.info("%s: removed %d temporary file(s) of an interrupted run", out_dir / f"images_{size}", removed)
    headers_file = out_dir / HEADERS_FILE
    done = _load_done(out_dir, sizes)
    todo = [Path(p) for p in paths if Path(p).stem not in done]
    failures: list[tuple[str, str]] = []
    # A name the file system allows but UTF-8 does not (it reaches Python as surrogates) cannot become an
    # image id, a PNG name or a CSV cell: listed with its name made printable, never decoded.
    for path in [p for p in todo if not is_utf8_name(p)]:
        log.warning("skipped %s: %s", printable_path(path), NOT_UTF8)
        failures.append((printable_path(path), NOT_UTF8))
    todo = [p for p in todo if is_utf8_name(p)]
    known = known or {}
    tasks = [(p, out_dir, sizes, known.get(p.stem)) for p in todo]
    with open(headers_file, "a") as headers:
        if headers.tell() and not headers_file.read_bytes().endswith(b"\n"):
            headers.write("\n")  # end a line cut short by a killed run before appending
        if workers > 1:
            executor = ProcessPoolExecutor(max_workers=workers, initializer=dies_with_this_process())
            results = executor.map(_decode_task, tasks, chunksize=4)
        else:
            executor, results = None, map(_decode_task, tasks)
        try:
            for path, decoded, reason in tqdm(results, total=len(tasks), desc="prepare", disable=not progress):
                if decoded is None:
                    log.warning("skipped %s: %s", path, reason)
                    failures.append((str(path), reason))
                    continue
                headers.write(json.dumps(asdict(decoded)) + "\n")
                headers.flush()
                done[decoded.image_id] = decoded
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
    return list(done.values()), failures


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
