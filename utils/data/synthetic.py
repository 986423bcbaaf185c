"""Synthetic data in the exact formats of the competition, NIH ChestX-ray14 and RSNA Pneumonia.

The splits, ids, label tables and DICOM styles of a synthetic competition folder, and the NIH and RSNA
companions; the pixels are :mod:`utils.data.chest_renderer`'s, the files :mod:`utils.data.dicom_writer`'s.
Everything is deterministic for a seed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from utils.data.boxes import as_boxes, xyxy_to_kaggle_xywh
from utils.data.chest_renderer import STUDY_CLASS_PRIOR, draw_class_opacities, draw_opacity, opacity_boxes, render_chest
from utils.data.dicom_writer import display_to_stored, write_dicom
from utils.data.labels import IMAGE_SUFFIX, STUDY_CLASSES, STUDY_COLUMNS, STUDY_SUFFIX
from utils.data.nih import NIH_FINDINGS, NIH_HEADER

# ----------------------------------------------------------------------------------------------
# The competition's folder
# ----------------------------------------------------------------------------------------------

def hex_id(rng: np.random.Generator, used: set) -> str:
    """A new 12-lowercase-hex id not in ``used``."""
    while True:
        value = "".join(rng.choice(list("0123456789abcdef"), size=12))
        if value not in used:
            used.add(value)
            return value


@dataclass
class DicomStyle:
    """How one synthetic image is stored (the DICOM variety of the real data)."""

    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    rescale: tuple[float, float] | None = None
    window: tuple[float, float] | None = None
    syntax: str = "explicit_le"


def random_style(rng: np.random.Generator) -> DicomStyle:
    """A style drawn from a mix like the competition's: mostly 12-bit MONOCHROME2, some of everything else."""
    bits = int(rng.choice([8, 12, 14, 16], p=[0.1, 0.5, 0.2, 0.2]))
    photometric = "MONOCHROME1" if rng.random() < 0.15 else "MONOCHROME2"
    rescale = None
    if rng.random() < 0.2:
        rescale = (float(rng.choice([0.5, 1.0, 2.0])), float(rng.choice([0.0, 100.0, -1024.0])))
    window = None
    if rng.random() < 0.5:
        top = (1 << bits) - 1
        slope, intercept = rescale or (1.0, 0.0)
        # A window over the central ~90% of the stored range, in rescaled units.
        window = (slope * top * 0.5 + intercept, slope * top * 0.9)
    syntaxes = ["explicit_le", "implicit_le", "rle", "jpeg2000", "jpeg_lossless", "jpeg_ls"]
    weights = [0.6, 0.1, 0.08, 0.08, 0.08, 0.06]
    if bits == 8:
        syntaxes.append("jpeg_baseline")
        weights.append(0.2)
    syntax = str(rng.choice(syntaxes, p=np.array(weights) / sum(weights)))
    return DicomStyle(photometric, bits, rescale, window, syntax)


@dataclass
class SyntheticImage:
    image_id: str
    series_id: str
    study_id: str
    patient_id: str
    study_class: str
    height: int
    width: int
    boxes: np.ndarray  # XYXY_PX, empty when un-annotated
    drawn: np.ndarray  # the opacities actually drawn (duplicates show them without boxes)
    style: DicomStyle = field(default_factory=DicomStyle)


def _image_size(rng: np.random.Generator, max_size: int) -> tuple[int, int]:
    # Real radiographs: portrait or landscape, width/height about 0.85-1.35 (median 3028 / 2544).
    height = int(max_size * rng.uniform(0.72, 0.95))
    width = int(min(max_size, height * rng.uniform(0.85, 1.35)))
    return max(height, 32), max(width, 32)


def plan_split(rng: np.random.Generator, n_studies: int, max_size: int, used: set) -> list[SyntheticImage]:
    """Ids, classes, boxes and DICOM styles of one split, before any pixel is drawn."""
    n_patients = max(1, int(round(n_studies * 0.55)))
    patients = [hex_id(rng, used) for _ in range(n_patients)]
    images: list[SyntheticImage] = []
    n_duplicates = max(1, int(round(n_studies * 0.06))) if n_studies >= 4 else 0
    duplicate_studies = set(rng.choice(n_studies, size=n_duplicates, replace=False).tolist()) if n_duplicates else set()
    for s in range(n_studies):
        # The first studies take one patient each so every patient exists; the rest repeat patients.
        patient = patients[s] if s < n_patients else patients[int(rng.integers(n_patients))]
        study_class = STUDY_CLASSES[int(rng.choice(4, p=STUDY_CLASS_PRIOR))]
        study_id = hex_id(rng, used)
        series_id = hex_id(rng, used)
        height, width = _image_size(rng, max_size)
        drawn = as_boxes([])
        if study_class != "negative" and rng.random() < 0.93:
            drawn = opacity_boxes(rng, study_class, height, width)
        images.append(SyntheticImage(hex_id(rng, used), series_id, study_id, patient, study_class,
                                     height, width, drawn, drawn, random_style(rng)))
        if s in duplicate_studies:
            # An extra image of the same study (often another series) that was never annotated.
            dup_series = series_id if rng.random() < 0.5 else hex_id(rng, used)
            dh, dw = _image_size(rng, max_size)
            scale = np.array([dw / width, dh / height, dw / width, dh / height])
            images.append(SyntheticImage(hex_id(rng, used), dup_series, study_id, patient, study_class,
                                         dh, dw, as_boxes([]), drawn * scale, random_style(rng)))
    return images


def render_image(image: SyntheticImage, seed: int) -> np.ndarray:
    """Display pixels in [0, 1] of one planned image (deterministic per image and seed)."""
    rng = np.random.default_rng([seed, int(image.image_id, 16) % (1 << 32)])
    pixels = render_chest(rng, image.height, image.width)
    if image.study_class != "negative":
        draw_class_opacities(pixels, image.drawn, image.study_class, rng)
    return pixels


def write_planned_dicom(image: SyntheticImage, path: Path, seed: int) -> None:
    style = image.style
    stored = display_to_stored(render_image(image, seed), bits_stored=style.bits_stored,
                               photometric=style.photometric)
    write_dicom(path, stored, patient_id=image.patient_id, study_uid=image.study_id, series_uid=image.series_id,
                image_uid=image.image_id, photometric=style.photometric, bits_stored=style.bits_stored,
                rescale=style.rescale, window=style.window, syntax=style.syntax)


def _kaggle_boxes_text(boxes: np.ndarray) -> str | None:
    if len(boxes) == 0:
        return None
    items = [{"x": round(float(x), 5), "y": round(float(y), 5), "width": round(float(w), 5),
              "height": round(float(h), 5)} for x, y, w, h in xyxy_to_kaggle_xywh(boxes)]
    return str(items)


def _label_text(boxes: np.ndarray) -> str:
    if len(boxes) == 0:
        return "none 1 0 0 1 1"
    parts = []
    for x, y, w, h in xyxy_to_kaggle_xywh(boxes):
        x, y, w, h = (round(float(v), 5) for v in (x, y, w, h))
        parts.append(f"opacity 1 {x} {y} {round(x + w, 5)} {round(y + h, 5)}")
    return " ".join(parts)


def image_level_frame(images: list[SyntheticImage]) -> pd.DataFrame:
    """``train_image_level.csv`` rows for planned images (same columns and encodings as the real file)."""
    return pd.DataFrame({
        "id": [i.image_id + IMAGE_SUFFIX for i in images],
        "boxes": [_kaggle_boxes_text(i.boxes) for i in images],
        "label": [_label_text(i.boxes) for i in images],
        "StudyInstanceUID": [i.study_id for i in images],
    })


def study_level_frame(images: list[SyntheticImage]) -> pd.DataFrame:
    """``train_study_level.csv`` rows (one-hot over the four study columns)."""
    studies = {}
    for i in images:
        studies.setdefault(i.study_id, i.study_class)
    rows = []
    for study_id, study_class in studies.items():
        rows.append([study_id + STUDY_SUFFIX] + [int(study_class == c) for c in STUDY_CLASSES])
    return pd.DataFrame(rows, columns=["id", *STUDY_COLUMNS])


def sample_submission_frame(images: list[SyntheticImage]) -> pd.DataFrame:
    """``sample_submission.csv``: one row per test study and per test image, with Kaggle's defaults."""
    studies = list(dict.fromkeys(i.study_id for i in images))
    ids = [s + STUDY_SUFFIX for s in studies] + [i.image_id + IMAGE_SUFFIX for i in images]
    strings = ["negative 1 0 0 1 1"] * len(studies) + ["none 1 0 0 1 1"] * len(images)
    return pd.DataFrame({"id": ids, "PredictionString": strings})


def make_siim_dataset(out, train_studies: int, test_studies: int, seed: int = 0, max_size: int = 256,
                      progress: bool = True) -> dict:
    """Write a competition folder: train/ and test/ DICOMs, the label CSVs, sample_submission.csv,
    and the test split's ground truth (test_image_level.csv, test_study_level.csv) for dry runs."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    used: set = set()
    splits = {"train": plan_split(rng, train_studies, max_size, used),
              "test": plan_split(rng, test_studies, max_size, used)}
    for split, images in splits.items():
        for image in tqdm(images, desc=f"synthetic {split}", disable=not progress):
            write_planned_dicom(image, out / split / image.study_id / image.series_id / f"{image.image_id}.dcm", seed)
    out.mkdir(parents=True, exist_ok=True)
    image_level_frame(splits["train"]).to_csv(out / "train_image_level.csv", index=False)
    study_level_frame(splits["train"]).to_csv(out / "train_study_level.csv", index=False)
    image_level_frame(splits["test"]).to_csv(out / "test_image_level.csv", index=False)
    study_level_frame(splits["test"]).to_csv(out / "test_study_level.csv", index=False)
    sample_submission_frame(splits["test"]).to_csv(out / "sample_submission.csv", index=False)
    return {split: len(images) for split, images in splits.items()}


# ----------------------------------------------------------------------------------------------
# NIH ChestX-ray14 and RSNA Pneumonia companions
# ----------------------------------------------------------------------------------------------

def _draw_nih_findings(rng: np.random.Generator, findings: list[str], size: int) -> np.ndarray:
    """A radiograph whose findings are visible: each has its own drawn sign."""
    heart = 1.45 if "Cardiomegaly" in findings else 1.0
    darker = 0.1 if "Emphysema" in findings else 0.0
    image = render_chest(rng, size, size, heart_scale=heart, lung_darkness=darker)
    s = float(size)
    signs = {
        "Effusion": ([0.18 * s, 0.62 * s, 0.45 * s, 0.76 * s], 0.35, 1.0, 0.0),
        "Nodule": ([0.25 * s, 0.3 * s, 0.31 * s, 0.36 * s], 0.5, 4.0, 0.0),
        "Mass": ([0.6 * s, 0.3 * s, 0.78 * s, 0.48 * s], 0.45, 3.0, 0.0),
        "Infiltration": ([0.58 * s, 0.45 * s, 0.8 * s, 0.68 * s], 0.2, 1.0, 0.6),
        "Pneumonia": ([0.2 * s, 0.4 * s, 0.42 * s, 0.62 * s], 0.25, 1.0, 0.5),
        "Consolidation": ([0.6 * s, 0.5 * s, 0.78 * s, 0.7 * s], 0.4, 2.0, 0.1),
        "Atelectasis": ([0.2 * s, 0.55 * s, 0.42 * s, 0.6 * s], 0.35, 2.0, 0.0),
        "Edema": ([0.3 * s, 0.35 * s, 0.7 * s, 0.65 * s], 0.15, 1.0, 0.3),
        "Fibrosis": ([0.18 * s, 0.22 * s, 0.45 * s, 0.45 * s], 0.15, 1.0, 1.5),
        "Pleural_Thickening": ([0.14 * s, 0.2 * s, 0.2 * s, 0.7 * s], 0.35, 2.0, 0.0),
        "Hernia": ([0.42 * s, 0.72 * s, 0.58 * s, 0.85 * s], 0.4, 2.0, 0.0),
    }
    for finding in findings:
        if finding in signs:
            box, strength, sharpness, texture = signs[finding]
            draw_opacity(image, box, strength=strength, sharpness=sharpness, texture=texture, rng=rng)
        elif finding == "Pneumothorax":
            image[int(0.2 * s):int(0.6 * s), int(0.7 * s):int(0.82 * s)] *= 0.5
    return image


def make_nih_dataset(out, n_images: int, seed: int = 0, image_size: int = 128, progress: bool = True) -> int:
    """Write an NIH ChestX-ray14-style folder: ``Data_Entry_2017.csv`` (exact header), PNGs under
    ``images_001/images/``, and patient-wise ``train_val_list.txt`` / ``test_list.txt``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    image_dir = out / "images_001" / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    n_patients = max(2, n_images // 2)
    rows, by_patient = [], {}
    for k in tqdm(range(n_images), desc="synthetic nih", disable=not progress):
        patient = 1 + (k if k < n_patients else int(rng.integers(n_patients)))
        follow_up = by_patient.get(patient, 0)
        by_patient[patient] = follow_up + 1
        name = f"{patient:08d}_{follow_up:03d}.png"
        n_findings = int(rng.choice([0, 1, 2, 3], p=[0.5, 0.3, 0.15, 0.05]))
        findings = sorted(rng.choice(NIH_FINDINGS, size=n_findings, replace=False).tolist())
        pixels = _draw_nih_findings(rng, findings, image_size)
        cv2.imwrite(str(image_dir / name), np.rint(pixels * 255).astype(np.uint8))
        width, height = int(rng.integers(2000, 3000)), int(rng.integers(2000, 3000))
        rows.append(f"{name},{'|'.join(findings) or 'No Finding'},{follow_up},{patient},{int(rng.integers(1, 90))},"
                    f"{rng.choice(['M', 'F'])},{rng.choice(['PA', 'AP'])},{width},{height},0.143,0.143")
    (out / "Data_Entry_2017.csv").write_text(NIH_HEADER + "\n" + "\n".join(rows) + "\n")
    patients = sorted(by_patient)
    test_patients = set(patients[:: 5])  # every fifth patient is official test, the rest train_val
    names = [r.split(",", 1)[0] for r in rows]
    test = [n for n in names if int(n[:8]) in test_patients]
    train_val = [n for n in names if int(n[:8]) not in test_patients]
    (out / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (out / "test_list.txt").write_text("\n".join(test) + "\n")
    return n_images


def make_rsna_dataset(out, n_images: int, seed: int = 0, image_size: int = 256, progress: bool = True) -> int:
    """Write an RSNA Pneumonia-style folder: ``stage_2_train_labels.csv`` (one row per box, Target 0
    rows without coordinates) and 8-bit MONOCHROME2 ``stage_2_train_images/<patientId>.dcm``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in tqdm(range(n_images), desc="synthetic rsna", disable=not progress):
        patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        pixels = render_chest(rng, image_size, image_size)
        boxes = as_boxes([])
        if rng.random() < 0.45:
            boxes = opacity_boxes(rng, "typical", image_size, image_size)
            draw_class_opacities(pixels, boxes, "typical", rng)
        stored = display_to_stored(pixels, bits_stored=8)
        write_dicom(out / "stage_2_train_images" / f"{patient_id}.dcm", stored, patient_id=patient_id,
                    study_uid=patient_id, series_uid=patient_id, image_uid=patient_id, bits_stored=8,
                    modality="CR")
        if len(boxes) == 0:
            rows.append((patient_id, None, None, None, None, 0))
        for x, y, w, h in xyxy_to_kaggle_xywh(boxes):
            rows.append((patient_id, round(float(x), 1), round(float(y), 1), round(float(w), 1),
                         round(float(h), 1), 1))
    pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        out / "stage_2_train_labels.csv", index=False)
    return n_images
