"""A competition folder converted to the layout of the public resized copies competitors train on, made
the way they were made (:func:`make_resized_copy`): what the project's own tests and the real-data checks
use to compare DICOMs with their copies."""

from __future__ import annotations

from pathlib import Path

import cv2
import pandas as pd
from tqdm import tqdm


def make_resized_copy(competition_dir, out, size: int = 256, quality: int = 95, progress: bool = True) -> dict:
    """A competition folder -> the layout of the public resized copies competitors train on, made the
    way they were made (display grayscale: VOI LUT, MONOCHROME1 inverted, min/max to 8 bits; then a
    Lanczos resize to ``size`` x ``size`` WITHOUT keeping the aspect ratio; JPEG):

        train/<image_id>.jpg, test/<image_id>.jpg
        meta.csv                 image_id, dim0, dim1, split (dim0/dim1: ORIGINAL height/width)
        train_image_level.csv, train_study_level.csv   copied (boxes in original pixels)
        train_meta.csv, test_meta.csv                  patientid, studyid, series_id, imageid per split
                                                       (the public solutions' tables from the DICOM headers)
    """
    from utils.data.dicom import read_dicom
    from utils.data.inputs import find_dicoms

    competition_dir, out = Path(competition_dir), Path(out)
    rows, counts = [], {}
    for split in ("train", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
        paths = find_dicoms(competition_dir / split)
        ids = []
        for path in tqdm(paths, desc=f"resized copy {split}", disable=not progress):
            radiograph = read_dicom(path)
            small = cv2.resize(radiograph.pixels, (size, size), interpolation=cv2.INTER_LANCZOS4)
            if not cv2.imwrite(str(out / split / f"{path.stem}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, quality]):
                raise OSError(f"could not write {out / split / f'{path.stem}.jpg'}")
            rows.append((path.stem, radiograph.original_height, radiograph.original_width, split))
            ids.append((radiograph.header.patient_id, path.parent.parent.name, path.parent.name, path.stem))
        pd.DataFrame(ids, columns=["patientid", "studyid", "series_id", "imageid"]).to_csv(
            out / f"{split}_meta.csv", index=False)
        counts[split] = len(paths)
    pd.DataFrame(rows, columns=["image_id", "dim0", "dim1", "split"]).to_csv(out / "meta.csv", index=False)
    for name in ("train_image_level.csv", "train_study_level.csv"):
        (out / name).write_bytes((competition_dir / name).read_bytes())
    return counts
