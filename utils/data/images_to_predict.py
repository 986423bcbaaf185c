"""Finding a test split's images: the competition's DICOM folder (``sample_submission.csv`` +
``test/<study>/<series>/<image>.dcm``) or a resized copy (``test/<image_id>.jpg|png``, its ``meta.csv``
with the original sizes, and a table of images and studies). make_submission, the notebook and the
pseudo-label stage read a test folder through :func:`find_test_images`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utils.data.inputs import find_dicoms, find_resized_images, is_resized_copy, read_id_table, read_resized_meta
from utils.data.labels import IMAGE_SUFFIX, STUDY_SUFFIX, strip_suffix
from utils.data.submission import read_sample_submission, sample_image_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestImage:
    """One test radiograph to predict: its file, ids and, for a resized copy, its ORIGINAL size (a
    DICOM gives its own: 0 means "from the file"), which the boxes are written in."""

    path: Path
    image_id: str
    study_id: str
    original_height: int = 0
    original_width: int = 0

    @classmethod
    def from_dicom_path(cls, path) -> "TestImage":
        """A DICOM in the competition's ``<study>/<series>/<image>.dcm`` layout."""
        path = Path(path)
        return cls(path, path.stem, path.parent.parent.name)


def find_test_dicoms(data_dir, sample: pd.DataFrame) -> list[TestImage]:
    """The test split's DICOMs (``test/<study>/<series>/<image>.dcm``); logs sample images without a file."""
    paths = find_dicoms(Path(data_dir) / "test")
    wanted = set(sample_image_ids(sample))
    _warn_missing(wanted, {p.stem for p in paths}, Path(data_dir) / "test")
    return [TestImage.from_dicom_path(p) for p in paths if p.stem in wanted or not wanted]


class NoTestImagesError(FileNotFoundError):
    """Not one image of the sample submission was found: a wrong folder, not a few bad files."""


def _warn_missing(wanted: set, found: set, where: Path) -> None:
    """Fail when no wanted image has a file (a submission of fallback rows scores zero, found out
    hours later on Kaggle); warn loudly with counts and examples when some are missing."""
    missing = sorted(wanted - found)
    if wanted and len(missing) == len(wanted):
        raise NoTestImagesError(
            f"{where}: none of the {len(wanted)} images of the sample submission was found ({len(found)} image "
            f"files there, e.g. {sorted(found)[:3]}; wanted e.g. {missing[:3]}). Is this the competition's test "
            f"folder (test/<study>/<series>/<image>.dcm)?")
    if missing:
        log.warning("%d of %d image(s) of the sample submission (%.0f%%) have no file under %s: they get fallback "
                    "rows; e.g. %s", len(missing), len(wanted), 100 * len(missing) / len(wanted), where, missing[:5])


def read_test_table(path) -> pd.DataFrame:
    """A table of test images and their studies (``image_id``/``imageid``, ``study_id``/``studyid``,
    as ``test_meta.csv`` of the public solutions) -> columns ``image_id, study_id``."""
    table = read_id_table(path, ("image_id", "study_id"), what="test image table")
    table["image_id"] = [strip_suffix(i, IMAGE_SUFFIX) for i in table["image_id"]]
    table["study_id"] = [strip_suffix(i, STUDY_SUFFIX) for i in table["study_id"]]
    return table


def find_resized_test_images(data_dir, test_table, sample: pd.DataFrame | None) -> tuple[pd.DataFrame, list[TestImage]]:
    """A resized copy's test split: ``data_dir/test/<image_id>.jpg|png``, the studies from ``test_table``
    (:func:`read_test_table`) and the original sizes from ``data_dir/meta.csv`` (split ``test``).
    Returns the sample (``sample``, or one row per study and per image of the table, studies first)
    and the images to predict. An image without a file or an original size is logged and gets a
    fallback row."""
    data_dir = Path(data_dir)
    table = read_test_table(test_table)
    if sample is None:
        studies = list(dict.fromkeys(table["study_id"]))
        ids = [s + STUDY_SUFFIX for s in studies] + [i + IMAGE_SUFFIX for i in table["image_id"]]
        sample = pd.DataFrame({"id": ids, "PredictionString": ""})
    files = find_resized_images(data_dir / "test")
    sizes, bad_rows, _ = read_resized_meta(data_dir, "test")
    for where, reason in bad_rows:
        log.warning("%s: %s (fallback row)", where, reason)
    size_of = {r.image_id: (r.original_height, r.original_width) for r in sizes.itertuples(index=False)}
    wanted = set(sample_image_ids(sample))
    _warn_missing(wanted, set(files), data_dir / "test")
    no_size = sorted((wanted & set(files)) - set(size_of))
    if no_size:
        log.warning("%d test image(s) have no original size in %s (fallback rows), e.g. %s", len(no_size),
                    data_dir / "meta.csv", no_size[:3])
    images = [TestImage(files[i], i, s, *size_of[i]) for i, s in zip(table["image_id"], table["study_id"])
              if i in wanted and i in files and i in size_of]
    return sample, images


def find_test_images(data_dir, test_table=None) -> tuple[pd.DataFrame, list[TestImage]]:
    """``(sample submission, images to predict)`` of either kind of test folder: the competition's
    (``sample_submission.csv`` + DICOMs) or a resized copy's (``test/<image_id>.jpg|png`` +
    ``meta.csv`` with original sizes + ``test_table`` mapping images to studies)."""
    data_dir = Path(data_dir)
    sample_path = data_dir / "sample_submission.csv"
    sample = read_sample_submission(sample_path) if sample_path.is_file() else None
    if is_resized_copy(data_dir):
        if test_table is None:
            raise FileNotFoundError(f"{data_dir} is a resized copy: give the table of its test images and studies "
                                    "(--test-meta, e.g. test_meta.csv with imageid and studyid)")
        return find_resized_test_images(data_dir, test_table, sample)
    if sample is None:
        raise FileNotFoundError(f"{sample_path}: not found (is {data_dir} the competition folder?)")
    return sample, find_test_dicoms(data_dir, sample)
