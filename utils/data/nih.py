"""NIH ChestX-ray14: the label file, image lookup and the patient-wise splits (the ``backbone`` kind's data).

``Data_Entry_2017.csv`` has 11 fields per row (two bracketed headers span two fields each; some
copies end rows with a comma), so it is read by position. ``Finding Labels`` is ``|``-separated from
the 14 findings; ``No Finding`` is all zeros. Images are PNGs anywhere under ``images*/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
ENTRY_FILE = "Data_Entry_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"


class NihLabelError(ValueError):
    """A ChestX-ray14 label or split file that cannot be used; names the file and the problem."""


def findings_to_targets(labels: str, where: str = "") -> np.ndarray:
    """``'Cardiomegaly|Emphysema'`` -> float32 multi-hot over :data:`NIH_FINDINGS`; ``No Finding`` -> zeros."""
    target = np.zeros(len(NIH_FINDINGS), dtype=np.float32)
    for name in str(labels).split("|"):
        name = name.strip()
        if name == NO_FINDING:
            continue
        if name not in NIH_FINDINGS:
            raise NihLabelError(f"{where}unknown finding {name!r}; known: {list(NIH_FINDINGS)} or {NO_FINDING!r}")
        target[NIH_FINDINGS.index(name)] = 1.0
    return target


def find_images(data_dir) -> dict[str, Path]:
    """Image file name -> path for every PNG under ``images*/`` (the official archives unpack to
    ``images_001/images/...``; a flat ``images/`` works too)."""
    found = {}
    for folder in sorted(Path(data_dir).glob("images*")):
        for path in folder.rglob("*.png"):
            found[path.name] = path
    return found


def load_nih_entries(data_dir) -> pd.DataFrame:
    """One row per image that exists on disk: ``image_index``, ``patient_id``, ``path``, ``targets``
    (float32 multi-hot). Rows whose image file is missing are logged and left out."""
    data_dir = Path(data_dir)
    path = data_dir / ENTRY_FILE
    if not path.is_file():
        raise NihLabelError(f"{path}: file not found")
    header = path.open().readline().strip().split(",")
    if header[:2] != ["Image Index", "Finding Labels"] or "Patient ID" not in header:
        raise NihLabelError(f"{path}: unexpected header {header[:4]}...; expected {NIH_HEADER[:60]}...")
    frame = pd.read_csv(path, usecols=[0, 1, header.index("Patient ID")], header=0, dtype=str,
                        names=range(len(header)), index_col=False)
    frame.columns = ["image_index", "finding_labels", "patient_id"]
    images = find_images(data_dir)
    if not images:
        raise NihLabelError(f"{data_dir}: no PNG images under images*/")
    targets = [findings_to_targets(labels, f"{path}: row {name}: ") for name, labels in
               zip(frame["image_index"], frame["finding_labels"])]
    frame["targets"] = targets
    frame["path"] = [images.get(name) for name in frame["image_index"]]
    missing = frame["path"].isna()
    if missing.any():
        log.warning("%s: %d of %d listed images not found under %s/images*/ (left out), e.g. %s", path,
                    int(missing.sum()), len(frame), data_dir, frame.loc[missing, "image_index"].iloc[0])
    frame = frame[~missing].reset_index(drop=True)
    if frame.empty:
        raise NihLabelError(f"{path}: none of the listed images exist under {data_dir}/images*/")
    return frame[["image_index", "patient_id", "path", "targets"]]


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def assign_nih_splits(entries: pd.DataFrame, split_dir=None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                      seed: int = 42) -> np.ndarray:
    """``train`` / ``val`` / ``test`` per row, always patient-wise.

    ``test`` is the official ``test_list.txt`` when ``split_dir`` holds both official lists (images
    in neither list are left out as ``""``); otherwise a patient-wise ``test_fraction``. ``val`` is a
    patient-wise ``val_fraction`` of the rest.
    """
    from sklearn.model_selection import GroupShuffleSplit  # here: sklearn takes 1.5 s to import

    split = np.full(len(entries), "", dtype=object)
    groups = entries["patient_id"].astype(str).to_numpy()
    lists = [Path(split_dir) / TRAIN_VAL_LIST, Path(split_dir) / TEST_LIST] if split_dir else []
    if lists and all(p.is_file() for p in lists):
        train_val, test = (_read_list(p) for p in lists)
        names = entries["image_index"].to_numpy()
        split[np.isin(names, list(test))] = "test"
        split[np.isin(names, list(train_val))] = "train"
        unlisted = int((split == "").sum())
        if unlisted:
            log.warning("%d images are in neither %s nor %s: left out", unlisted, *lists)
    else:
        split[:] = "train"
        if len(np.unique(groups)) >= 3:
            splitter = GroupShuffleSplit(1, test_size=test_fraction, random_state=seed)
            _, test_rows = next(splitter.split(groups, groups=groups))
            split[test_rows] = "test"
    train_rows = np.flatnonzero(split == "train")
    if len(np.unique(groups[train_rows])) >= 2:
        splitter = GroupShuffleSplit(1, test_size=val_fraction, random_state=seed + 1)
        _, val_rows = next(splitter.split(train_rows, groups=groups[train_rows]))
        split[train_rows[val_rows]] = "val"
    return split
