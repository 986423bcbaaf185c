"""Reading radiographs: the one reader used by preparation, inference, the notebook and the web app.

A DICOM is turned into display grayscale the way the standard says (PS3.4 / C.11):
stored values -> modality LUT or rescale slope/intercept -> VOI LUT or window -> MONOCHROME1 inversion
-> min/max normalisation to the full output range.

Speed: instead of running those steps over every full-resolution pixel in float64, the whole chain is
evaluated once on the 1-D range of stored values present in the image (``np.arange(min, max + 1)``),
using pydicom's own modality and VOI functions, which gives a lookup table. The stored image is
resized first (area averaging, in its integer type) and the table is applied to the small image.
For the monotonic transfer functions of radiographs (rescale, linear or sigmoid windows, VOI LUT
tables) this matches the full-resolution recipe to well under one grey level on average
(``python infer/benchmark.py reader`` measures both).
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length

Source = Union[str, os.PathLike, bytes]

# A lookup table over the stored range is built when that range is at most this many values
# (16-bit data needs 65,536); wider data (32-bit, float) takes the full-resolution float path.
_MAX_LUT_ENTRIES = 1 << 20
_DICOM_MAGIC_OFFSET = 128


class DicomReadError(ValueError):
    """A radiograph that cannot be read: carries the file's name and the reason."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


NO_DECODER = "no decoder installed for"  # how a missing decoder's reason starts (counted apart)


class MissingDecoderError(DicomReadError):
    """Compressed pixel data that no installed plugin of pydicom decodes (a package missing, not a bad file)."""


def unreadable_group(reason: str) -> str:
    """The kind of a reader's error, for counting them: its reason up to the first ``": "`` or ``" ("``
    (``"truncated: 10 of 20 pixel bytes"`` -> ``"truncated"``). A missing decoder's reason is one group
    per transfer syntax, and its remainder says what to install."""
    return reason.split(": ", 1)[0].split(" (", 1)[0]


class ImageSizeError(DicomReadError):
    """An image whose declared shape is refused before anything is decoded (too many pixels, or a
    shape no radiograph has); the web app answers it with 413."""


# The pixel bound of every image read from outside (test folders, pseudo-label and training folders, the web
# app's uploads): about 9,000 x 9,000, far above any radiograph (the competition's largest is about 4,900 x
# 4,900), far below a decompression bomb; a deflated DICOM may inflate to 2 bytes per allowed pixel.
MAX_PIXELS = 80_000_000
MIN_SIDE = 8  # pixels: a thinner "radiograph" is a sliver, and previews would upscale it enormously
MAX_ASPECT = 8.0  # longer side / shorter side; chest radiographs are near 1 (panoramas of 3 at most)


def check_image_shape(label: str, rows: int, columns: int, max_pixels: int | None) -> None:
    """Refuse (:class:`ImageSizeError`) a declared shape over ``max_pixels`` pixels or, when a bound is
    given at all (untrusted input), a side under :data:`MIN_SIDE` or an aspect over :data:`MAX_ASPECT`."""
    if max_pixels is None or rows <= 0 or columns <= 0:
        return  # no shape declared (a truncated header): the decoder says what is wrong
    if rows * columns > max_pixels:
        raise ImageSizeError(label, f"image too large: {rows} x {columns} exceeds {max_pixels} pixels")
    if min(rows, columns) < MIN_SIDE or max(rows, columns) > MAX_ASPECT * min(rows, columns):
        raise ImageSizeError(label, f"implausible image shape {rows} x {columns} (sides of at least {MIN_SIDE} "
                                    f"pixels and an aspect ratio up to {MAX_ASPECT:g} are accepted)")


@dataclass(frozen=True)
class DicomHeader:
    """The header fields later stages need (ids are the competition's 12-hex strings as stored)."""

    patient_id: str
    study_uid: str
    series_uid: str
    image_uid: str
    rows: int
    columns: int
    photometric: str
    bits_stored: int
    transfer_syntax: str


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph: display grayscale (uint8 0-255 or float32 0-1) and where it came from.

    ``original_height``/``original_width`` are the stored DICOM (or file) size, before any resize:
    predicted boxes are mapped back to these.
    """

    pixels: np.ndarray
    original_height: int
    original_width: int
    source: str
    header: DicomHeader | None = None


@contextlib.contextmanager
def lenient_dicom_values():
    """Accept the competition's 12-hex 'UIDs' (not valid UI values) without warnings, then restore."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _source_name(source: Source, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return str(source)


DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole body is zlib


def check_deflated_size(data: bytes, label: str, limit: int) -> None:
    """Refuse a deflate-compressed DICOM whose body would inflate beyond ``limit`` bytes, inflating at
    most ``limit + 1`` bytes to find out (pydicom inflates the whole body on reading, before any
    header value can be checked: a small upload could expand to gigabytes)."""
    fileobj = io.BytesIO(data)
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        read_preamble(fileobj, True)
        meta = _read_file_meta_info(fileobj)
    except Exception:  # noqa: BLE001 - not parseable here: dcmread says why
        return
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_SYNTAX:
        return
    # Counted 1 MiB at a time and dropped: holding the inflated bytes would itself cost up to ``limit``
    # (hundreds of MB for the web app's bound, and the allocator keeps much of it after the request).
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, inflated = data[fileobj.tell():], 0
    try:
        while pending and inflated <= limit and not inflater.eof:
            inflated += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
    except zlib.error:
        return  # corrupt stream: dcmread says why
    if inflated > limit:
        raise ImageSizeError(label, f"deflate-compressed DICOM expands beyond {limit} bytes")


def _open_dataset(source: Source, label: str, stop_before_pixels: bool,
                  max_inflated: int | None = None) -> pydicom.Dataset:
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise DicomReadError(label, "empty file (0 bytes)")
        if max_inflated is not None:
            check_deflated_size(bytes(source), label, max_inflated)
        fileobj = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise DicomReadError(label, "file not found")
        if path.stat().st_size == 0:
            raise DicomReadError(label, "empty file (0 bytes)")
        fileobj = path
    try:
        # force=True also reads datasets written without the 128-byte preamble; a file that is
        # not DICOM at all then fails the checks below with a clear reason.
        return pydicom.dcmread(fileobj, force=True, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise DicomReadError(label, f"not a DICOM file ({err})") from err
    except Exception as err:  # truncated or corrupt headers raise many different types
        raise DicomReadError(label, f"unreadable DICOM header ({type(err).__name__}: {err})") from err


def _header(ds: pydicom.Dataset, label: str) -> DicomHeader:
    try:
        syntax = ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else ""
        return DicomHeader(
            patient_id=str(ds.get("PatientID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            image_uid=str(ds.get("SOPInstanceUID", "") or ""),
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            photometric=str(ds.get("PhotometricInterpretation", "") or "").upper(),
            bits_stored=int(ds.get("BitsStored", 0) or 0),
            transfer_syntax=str(syntax),
        )
    except Exception as err:
        raise DicomReadError(label, f"malformed header field ({type(err).__name__}: {err})") from err


def read_dicom_header(source: Source, *, name: str | None = None) -> DicomHeader:
    """Read only the header (no pixel data): ids, size, photometric interpretation, syntax."""
    label = _source_name(source, name)
    with lenient_dicom_values():
        ds = _open_dataset(source, label, stop_before_pixels=True)
        return _header(ds, label)


def _syntax_name(header: DicomHeader) -> str:
    try:
        return f"{pydicom.uid.UID(header.transfer_syntax).name} ({header.transfer_syntax})"
    except Exception:
        return header.transfer_syntax or "unknown transfer syntax"


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_BITMAP_SIGNATURES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image"}


def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    """Bytes of all the uncompressed frames the header describes, as pydicom computes them (samples,
    bits allocated, 1-bit data packed, 4:2:2 chroma subsampling); 0 when a field is missing or malformed."""
    try:
        return int(get_expected_length(ds, unit="bytes"))
    except Exception:  # noqa: BLE001 - a missing or malformed field: the decoder says what is wrong
        return 0


def _missing_pixels_reason(source: Source, ds: pydicom.Dataset, header: DicomHeader) -> str:
    """Why a dataset has no pixel data: not a DICOM at all, or a DICOM cut short (and how short)."""
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    except OSError:
        data = b""
    for signature, what in _BITMAP_SIGNATURES.items():
        if data.startswith(signature):
            return f"not a DICOM file ({what} with a DICOM name?)"
    if not is_dicom_bytes(data) and header.rows <= 0 and not header.image_uid:
        return "not a DICOM file (no DICM marker and no DICOM image header)"
    if header.rows <= 0 or header.columns <= 0:
        return "truncated or corrupt DICOM: no image header (Rows, Columns) and no pixel data could be read"
    expected = _expected_pixel_bytes(ds) or "?"
    at = data.rfind(_PIXEL_DATA_TAG)
    if at < 0:
        return f"no pixel data: truncated before it, or a DICOM without an image (0 of {expected} pixel bytes)"
    present = max(0, len(data) - at - 12)  # tag, VR OB/OW, reserved, 4-byte length
    return f"truncated: {present} of {expected} pixel bytes"


def _check_pixel_length(ds: pydicom.Dataset, header: DicomHeader, label: str) -> None:
    """Uncompressed pixel data must hold the frames the header describes: fewer bytes is a file cut short;
    a whole frame or more beyond them (a Rows too small for its data) would silently decode as the first of
    several frames. Less than a frame beyond is padding, which pydicom trims."""
    syntax = pydicom.uid.UID(header.transfer_syntax) if header.transfer_syntax else None
    if "PixelData" not in ds or (syntax is not None and syntax.is_compressed):
        return
    try:
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        stored = len(ds.PixelData)
    except (TypeError, ValueError):
        return  # a malformed field: the decoder says what is wrong
    expected = _expected_pixel_bytes(ds)
    if expected and stored < expected:
        raise DicomReadError(label, f"truncated: {stored} of {expected} pixel bytes")
    frame_bytes = expected // frames
    if frame_bytes and stored >= expected + frame_bytes:
        raise DicomReadError(label, f"pixel data holds {stored} bytes but Rows x Columns x frames "
                                    f"({header.rows} x {header.columns} x {frames}) needs {expected}: the header "
                                    "does not describe the image")


def _check_decoder(header: DicomHeader, label: str) -> None:
    """Refuse (:class:`MissingDecoderError`) compressed pixel data without an installed decoder, saying
    which packages pydicom could use."""
    try:
        syntax = pydicom.uid.UID(header.transfer_syntax)
        decoder = get_decoder(syntax) if syntax.is_compressed else None
    except Exception:  # noqa: BLE001 - an unknown or malformed syntax: the decoder says what is wrong
        return
    if decoder is not None and not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        raise MissingDecoderError(label, f"{NO_DECODER} {_syntax_name(header)}: pydicom needs one of: "
                                         f"{needs}")


def _decode_first_frame(ds: pydicom.Dataset, header: DicomHeader, label: str,
                        source: Source | None = None) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError(label, "no pixel data" if source is None else _missing_pixels_reason(source, ds, header))
    if header.rows <= 0 or header.columns <= 0:
        raise DicomReadError(label, f"zero-size image ({header.rows} x {header.columns})")
    _check_pixel_length(ds, header, label)
    _check_decoder(header, label)
    try:
        frame = pixel_array(ds, index=0)
    except Exception as err:
        raise DicomReadError(
            label, f"cannot decode pixel data in {_syntax_name(header)}: {type(err).__name__}: {err}"
        ) from err
    if frame.size == 0:
        raise DicomReadError(label, "decoded image is empty")
    if not frame.dtype.isnative:
        # Big endian syntaxes decode to e.g. '>u2'; OpenCV would read those bytes as native order.
        frame = frame.astype(frame.dtype.newbyteorder("="))
    return frame


def resize_image(image: np.ndarray, size: int | None, *, keep_aspect: bool = False) -> np.ndarray:
    """Resize a 2-D image: to ``size`` x ``size`` or, with ``keep_aspect``, shorter side to ``size``.

    Area averaging when shrinking (no aliasing), bilinear when enlarging. ``size=None`` returns the
    image unchanged.
    """
    if size is None:
        return image
    height, width = image.shape[:2]
    if keep_aspect:
        scale = size / min(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    else:
        new_w = new_h = int(size)
    if (new_h, new_w) == (height, width):
        return image
    shrinking = new_h * new_w < height * width
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _to_output(normalised: np.ndarray, dtype: str) -> np.ndarray:
    """Values in [0, 1] -> uint8 0-255 (rounded) or float32 0-1."""
    if dtype == "uint8":
        return np.rint(normalised * 255.0).astype(np.uint8)
    if dtype == "float32":
        return normalised.astype(np.float32)
    raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")


def _normalise(values: np.ndarray) -> np.ndarray:
    """Min/max to [0, 1]; a constant input gives zeros instead of a division by zero."""
    values = values.astype(np.float64, copy=False)
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("non-finite pixel values")
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _grayscale_display(ds, frame, header, size, keep_aspect, dtype) -> np.ndarray:
    invert = header.photometric == "MONOCHROME1"
    integer = frame.dtype.kind in "iu"
    if integer:
        # cv2.minMaxLoc is one pass over the image; numpy's min() and max() would be two.
        low, high = (int(v) for v in cv2.minMaxLoc(frame)[:2]) if frame.dtype.itemsize <= 2 else (
            int(frame.min()), int(frame.max()))
    if integer and high - low < _MAX_LUT_ENTRIES:
        stored = np.arange(low, high + 1, dtype=np.int64)
        transfer = apply_voi_lut(apply_modality_lut(stored, ds), ds)
        if invert:
            transfer = transfer.max() - transfer
        table = _to_output(_normalise(transfer), dtype)
        if frame.dtype.itemsize > 2:  # OpenCV's area resize has no 32-bit integer path
            small = np.rint(resize_image(frame.astype(np.float64), size, keep_aspect=keep_aspect))
        else:
            small = resize_image(frame, size, keep_aspect=keep_aspect)
        return table[small.astype(np.int64) - low]
    # Wide-range or float data: the full chain per pixel, then resize.
    values = apply_voi_lut(apply_modality_lut(frame.astype(np.float64), ds), ds)
    if invert:
        values = values.max() - values
    image = _normalise(values).astype(np.float32)
    return _to_output(resize_image(image, size, keep_aspect=keep_aspect), dtype)


def _colour_display(ds, frame, header, size, keep_aspect, dtype) -> np.ndarray:
    if header.photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3 and frame.shape[-1] >= 3:
        frame = frame[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    image = _normalise(frame).astype(np.float32)
    return _to_output(resize_image(image, size, keep_aspect=keep_aspect), dtype)


def read_dicom(
    source: Source,
    size: int | None = None,
    *,
    keep_aspect: bool = False,
    dtype: str = "uint8",
    max_pixels: int | None = None,
    name: str | None = None,
) -> Radiograph:
    """Decode a DICOM radiograph (path or bytes) to display grayscale.

    Args:
        source: a file path or the file's bytes.
        size: resize to ``size`` x ``size`` (or shorter side to ``size`` with ``keep_aspect``); None
            keeps the stored size.
        dtype: ``"uint8"`` (0-255) or ``"float32"`` (0-1).
        max_pixels: refuse images with more rows x columns than this before decoding anything.
        name: how to name the file in errors (defaults to the path).

    Returns a :class:`Radiograph` with the header and the stored (original) height and width.
    Raises :class:`DicomReadError` naming the file and the reason for any file it cannot read.
    Multi-frame files give their first frame; colour images are converted to luminance.
    """
    label = _source_name(source, name)
    with lenient_dicom_values():
        # With a pixel bound (untrusted input), a deflated body may hold at most 2 bytes per allowed
        # pixel (16-bit) plus 1 MB of other elements.
        inflate_limit = None if max_pixels is None else 2 * max_pixels + (1 << 20)
        ds = _open_dataset(source, label, stop_before_pixels=False, max_inflated=inflate_limit)
        header = _header(ds, label)
        check_image_shape(label, header.rows, header.columns, max_pixels)
        frame = _decode_first_frame(ds, header, label, source)
        try:
            if frame.ndim == 2 and header.photometric != "PALETTE COLOR":
                pixels = _grayscale_display(ds, frame, header, size, keep_aspect, dtype)
            else:
                pixels = _colour_display(ds, frame, header, size, keep_aspect, dtype)
        except DicomReadError:
            raise
        except Exception as err:
            raise DicomReadError(label, f"cannot convert pixels to grayscale ({type(err).__name__}: {err})") from err
    height, width = frame.shape[:2]
    return Radiograph(pixels, int(height), int(width), label, header)


def is_dicom_bytes(data: bytes) -> bool:
    """True when the bytes carry the DICOM preamble marker ``DICM``."""
    return data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM"


def read_radiograph(
    source: Source,
    size: int | None = None,
    *,
    keep_aspect: bool = False,
    dtype: str = "uint8",
    max_pixels: int | None = None,
    name: str | None = None,
) -> Radiograph:
    """Read a DICOM, PNG or JPEG radiograph (path or bytes) the same way :func:`read_dicom` does.

    PNG/JPEG files (NIH ChestX-ray14, uploads to the web app) are taken as display grayscale already:
    colour is converted to luminance and 16-bit PNGs are min/max normalised.
    """
    label = _source_name(source, name)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise DicomReadError(label, "file not found")
        if path.suffix.lower() in (".dcm", ".dicom"):
            return read_dicom(path, size, keep_aspect=keep_aspect, dtype=dtype, max_pixels=max_pixels, name=name)
        data = path.read_bytes()
    if not data:
        raise DicomReadError(label, "empty file (0 bytes)")
    if is_dicom_bytes(data):
        return read_dicom(data, size, keep_aspect=keep_aspect, dtype=dtype, max_pixels=max_pixels, name=label)
    return _read_bitmap(data, label, size, keep_aspect, dtype, max_pixels)


def _bitmap_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header without decoding the pixels; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            i += 2 + length
    return None


def _read_bitmap(data: bytes, label: str, size, keep_aspect, dtype, max_pixels) -> Radiograph:
    dims = _bitmap_size(data)
    if dims is None:
        raise DicomReadError(label, "not a DICOM, PNG or JPEG image")
    if max_pixels is not None:
        check_image_shape(label, dims[0], dims[1], max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # OpenCV raises rather than returning None for some damaged headers
        raise DicomReadError(label, f"corrupt PNG/JPEG image ({' '.join(str(err).split())[:200]})") from err
    if image is None or image.size == 0:
        raise DicomReadError(label, "corrupt or truncated PNG/JPEG image")
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    height, width = image.shape[:2]
    if image.dtype == np.uint8:
        small = resize_image(image, size, keep_aspect=keep_aspect)
        pixels = small if dtype == "uint8" else _to_output(small / 255.0, dtype)
    else:
        pixels = _to_output(resize_image(_normalise(image).astype(np.float32), size, keep_aspect=keep_aspect), dtype)
    return Radiograph(pixels, int(height), int(width), label, None)
