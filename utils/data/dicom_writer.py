"""Writing a radiograph as a DICOM file the way scanners do: every photometric interpretation, bit depth
and transfer syntax the competition's files use (uncompressed, RLE, JPEG baseline, lossless, LS and
2000), with the stored values a display image maps to. The synthetic datasets and the tests of the
reader write through it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
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

from utils.data.dicom import lenient_dicom_values

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
