"""Synthetic data in the exact formats of the competition, NIH ChestX-ray14 and RSNA Pneumonia.

Pixels look like a chest radiograph (body, dark lung fields, ribs, mediastinum, noise) and opacities
are drawn strictly inside their boxes, with a different pattern per study class, so that detectors
and classifiers have something real to learn. Everything is deterministic for a seed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from tqdm import tqdm

from utils.data.boxes import as_boxes, xyxy_to_kaggle_xywh
from utils.data.dicom import lenient_dicom_values
from utils.data.labels import IMAGE_SUFFIX, STUDY_CLASSES, STUDY_COLUMNS, STUDY_SUFFIX
from utils.data.nih import NIH_FINDINGS, NIH_HEADER

# Transfer syntaxes the writer can produce, by short name.
TRANSFER_SYNTAXES = {
    "explicit_le": ExplicitVRLittleEndian,
    "implicit_le": ImplicitVRLittleEndian,
    "explicit_be": ExplicitVRBigEndian,
    "rle": RLELossless,
    "jpeg_baseline": JPEGBaseline8Bit,
    "jpeg_lossless": JPEGLosslessSV1,
    "jpeg_ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

# Real class mix of train_study_level.csv (1676 / 2855 / 1049 / 474 of 6054 studies).
STUDY_CLASS_PRIOR = np.array([1676, 2855, 1049, 474]) / 6054.0
# ----------------------------------------------------------------------------------------------
# Writing one DICOM file
# ----------------------------------------------------------------------------------------------

def _gdcm_transcode(path: Path, syntax_uid: str) -> None:
    """Re-encode an uncompressed file in place with GDCM (pydicom has no JPEG Lossless/JPEG-LS encoder)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"GDCM could not read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax_uid)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not encode {path} as {syntax_uid}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {path}")


def _build_dataset(stored, rows, cols, colour, frames, bits_allocated, bits_stored, patient_id, study_uid,
                   series_uid, image_uid, photometric, rescale, window, modality) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = DX_SOP_CLASS if modality == "DX" else CR_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = image_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = image_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:.1f}", f"{max(window[1], 1.0):.1f}"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    return ds


def _write_dataset(path, stored, uid, syntax, colour, frames, bits_allocated, ds) -> None:
    rows, cols = ds.Rows, ds.Columns
    if syntax == "implicit_le":
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(path, enforce_file_format=True, implicit_vr=True)
    elif syntax == "explicit_be":
        # pydicom converts headers but not pixel bytes between endiannesses; swap them here.
        ds.PixelData = stored.byteswap().tobytes() if bits_allocated == 16 else stored.tobytes()
        ds.file_meta.TransferSyntaxUID = uid
        ds.preamble = b"\0" * 128
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    elif syntax == "jpeg_baseline":
        encoded = []
        for frame in stored.reshape((frames, rows, cols, -1) if colour else (frames, rows, cols)):
            ok, data = cv2.imencode(".jpg", frame[..., ::-1] if colour else frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {path}")
            encoded.append(data.tobytes())
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.file_meta.TransferSyntaxUID = uid
        ds.save_as(path, enforce_file_format=True)
    elif syntax in ("rle", "jpeg2000"):
        # The default RLE encoder aborts the whole process on 8-bit rows of odd length (make_synthetic died
        # for seeds 1, 13, 25, ...); pydicom's own (slower) encoder writes them.
        plugin = "pydicom" if syntax == "rle" and bits_allocated == 8 and cols % 2 else ""
        ds.compress(uid, stored, generate_instance_uid=False, encoding_plugin=plugin)
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)
        if syntax in ("jpeg_lossless", "jpeg_ls"):
            _gdcm_transcode(path, str(uid))


def write_dicom(
    path,
    stored: np.ndarray,
    *,
    patient_id: str = "000000000000",
    study_uid: str = "000000000000",
    series_uid: str = "000000000000",
    image_uid: str = "000000000000",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    syntax: str = "explicit_le",
    modality: str = "DX",
) -> Path:
    """Write stored pixel values as a DICOM file the way the competition's files are laid out.

    ``stored``: uint8/uint16 array, (rows, cols) for grayscale, (frames, rows, cols) for multi-frame or
    (rows, cols, 3) for RGB. ``rescale`` is (slope, intercept); ``window`` is (center, width) in
    rescaled units. ``syntax`` is a key of :data:`TRANSFER_SYNTAXES`. UIDs are written as given (the
    competition uses 12-hex strings, which are not valid UI values).
    """
    if syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; choose from {sorted(TRANSFER_SYNTAXES)}")
    stored = np.ascontiguousarray(stored)
    colour = stored.ndim == 3 and stored.shape[-1] == 3 and photometric == "RGB"
    frames = stored.shape[0] if stored.ndim == 3 and not colour else 1
    rows, cols = (stored.shape[:2] if colour else stored.shape[-2:])
    bits_allocated = 8 if stored.dtype == np.uint8 else 16
    bits_stored = bits_stored or bits_allocated
    if syntax == "jpeg_baseline" and bits_allocated != 8:
        raise ValueError("JPEG baseline needs 8-bit pixels")
    if syntax == "jpeg_lossless" and bits_allocated == 8 and cols % 2:
        # GDCM cannot encode 8-bit JPEG Lossless rows of odd length: the 8 stored bits go in 16 allocated
        # ones, as many real files have them.
        stored, bits_allocated = stored.astype(np.uint16), 16
    uid = TRANSFER_SYNTAXES[syntax]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    with lenient_dicom_values():
        _write_dataset(path, stored, uid, syntax, colour, frames, bits_allocated,
                       _build_dataset(stored, rows, cols, colour, frames, bits_allocated, bits_stored, patient_id,
                                      study_uid, series_uid, image_uid, photometric, rescale, window, modality))
    return path


def display_to_stored(display: np.ndarray, *, bits_stored: int, photometric: str = "MONOCHROME2") -> np.ndarray:
    """Display intensities in [0, 1] (bright = dense) -> stored integers a correct reader maps back.

    MONOCHROME1 stores the inverse. A rescale with a positive slope needs no change here: the
    reader's min/max normalisation after the modality rescale gives the same display image.
    """
    top = (1 << bits_stored) - 1
    values = np.clip(display, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    stored = np.rint(values * top)
    return stored.astype(np.uint8 if bits_stored <= 8 else np.uint16)


# ----------------------------------------------------------------------------------------------
# Drawing a chest radiograph
# ----------------------------------------------------------------------------------------------

def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def render_chest(rng: np.random.Generator, height: int, width: int, *, heart_scale: float = 1.0,
                 lung_darkness: float = 0.0) -> np.ndarray:
    """A chest-radiograph-like display image in [0, 1] (float32, bright = dense)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    jitter = rng.normal(0, 0.015, size=6)
    image = np.full((height, width), 0.08, np.float32)
    body = _ellipse(yy, xx, 0.58 + jitter[0], 0.5, 0.55, 0.46)
    image += 0.45 * np.clip(1.2 - body, 0, 1) ** 0.5
    lungs = np.zeros_like(image)
    for side, cx in ((0, 0.31), (1, 0.69)):
        d = _ellipse(yy, xx, 0.46 + jitter[1 + side], cx + jitter[3], 0.27, 0.14)
        lungs = np.maximum(lungs, np.clip(1.0 - d, 0, 1) ** 0.35)
    image -= (0.32 + lung_darkness) * lungs
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (yy * 11 + 1.5 * (xx - 0.5) ** 2 * 4 + jitter[4]))
    image += 0.07 * lungs * ribs ** 3
    heart = _ellipse(yy, xx, 0.62, 0.53 + jitter[5], 0.15 * heart_scale, 0.12 * heart_scale)
    image += 0.35 * np.clip(1.0 - heart, 0, 1) ** 0.5
    spine = np.exp(-(((xx - 0.5) / 0.035) ** 2)) * (yy > 0.1)
    image += 0.25 * spine
    image += 0.3 * np.clip((yy - 0.78) / 0.12, 0, 1) * np.clip(1.2 - body, 0, 1)
    # Low-frequency exposure variation plus quantum noise.
    image += cv2.resize(rng.normal(0, 0.03, (6, 6)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 0.015, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def draw_opacity(image: np.ndarray, box, *, strength: float, sharpness: float, texture: float,
                 rng: np.random.Generator) -> None:
    """Add an opacity strictly inside the XYXY_PX ``box`` (in place): a bump inside its inscribed ellipse."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c0, r0 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
    c1, r1 = min(int(np.ceil(x2)), image.shape[1]), min(int(np.ceil(y2)), image.shape[0])
    if c1 <= c0 or r1 <= r0:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    d = _ellipse(yy, xx, (y1 + y2) / 2, (x1 + x2) / 2, max((y2 - y1) / 2, 1e-3), max((x2 - x1) / 2, 1e-3))
    bump = np.clip(1.0 - d, 0.0, 1.0) ** (1.0 / sharpness)
    if texture > 0:
        grain = rng.normal(0, 1, (max(2, (r1 - r0) // 8), max(2, (c1 - c0) // 8))).astype(np.float32)
        grain = cv2.resize(grain, (c1 - c0, r1 - r0), interpolation=cv2.INTER_LINEAR)
        bump *= np.clip(1.0 + texture * grain, 0.0, 2.0)
    image[r0:r1, c0:c1] = np.clip(image[r0:r1, c0:c1] + strength * bump, 0.0, 1.0)


# Opacity pattern per study class: box count, size (fraction of the lung), place, strength.
_CLASS_PATTERNS = {
    "typical": dict(counts=(2, 3), size=(0.16, 0.24), rows=(0.45, 0.68), peripheral=True,
                    strength=(0.22, 0.30), sharpness=1.0, texture=0.6),
    "indeterminate": dict(counts=(1, 2), size=(0.12, 0.18), rows=(0.25, 0.5), peripheral=False,
                          strength=(0.25, 0.35), sharpness=1.5, texture=0.2),
    "atypical": dict(counts=(1, 1), size=(0.07, 0.11), rows=(0.22, 0.4), peripheral=False,
                     strength=(0.45, 0.6), sharpness=4.0, texture=0.0),
}


def opacity_boxes(rng: np.random.Generator, study_class: str, height: int, width: int) -> np.ndarray:
    """XYXY_PX boxes for an image of a positive study, placed in the lung fields by class pattern."""
    pattern = _CLASS_PATTERNS[study_class]
    count = int(rng.integers(pattern["counts"][0], pattern["counts"][1] + 1))
    sides = rng.permutation([0.31, 0.69]).tolist() * 2
    boxes = []
    for k in range(count):
        cx = sides[k]
        if pattern["peripheral"]:
            cx += -0.06 if cx < 0.5 else 0.06
        cx += rng.normal(0, 0.02)
        cy = rng.uniform(*pattern["rows"])
        size = rng.uniform(*pattern["size"])
        bw, bh = size * width * rng.uniform(0.9, 1.2), size * height * rng.uniform(1.0, 1.6)
        x1, y1 = np.clip(cx * width - bw / 2, 1, width - 2), np.clip(cy * height - bh / 2, 1, height - 2)
        x2, y2 = np.clip(x1 + bw, x1 + 1, width - 1), np.clip(y1 + bh, y1 + 1, height - 1)
        boxes.append([x1, y1, x2, y2])
    return as_boxes(boxes)


def draw_class_opacities(image: np.ndarray, boxes, study_class: str, rng: np.random.Generator) -> None:
    """Draw every box's opacity (in place) with the class's pattern."""
    pattern = _CLASS_PATTERNS[study_class]
    for box in as_boxes(boxes):
        draw_opacity(image, box, strength=rng.uniform(*pattern["strength"]), sharpness=pattern["sharpness"],
                     texture=pattern["texture"], rng=rng)


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
