import re
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from utils.data.dicom import DicomReadError, read_dicom, read_dicom_header, read_radiograph
from utils.data.dicom_writer import TRANSFER_SYNTAXES, display_to_stored, write_dicom

IDS = dict(patient_id="a1b2c3d4e5f6", study_uid="00086460a852", series_uid="9e8302230c91", image_uid="65761e66de9f")


def display_pattern(height=96, width=120):
    """A smooth ramp with a bright square: distinct values across the whole range."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = 0.1 + 0.8 * (xx / (width - 1)) * (0.5 + 0.5 * yy / (height - 1))
    image[20:40, 30:60] = 1.0
    image[60:70, 80:100] = 0.0
    return image


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_every_syntax_decodes_to_the_display_image(tmp_path, syntax, photometric):
    bits = 8 if syntax == "jpeg_baseline" else 12
    display = display_pattern()
    stored = display_to_stored(display, bits_stored=bits, photometric=photometric)
    path = write_dicom(tmp_path / "x.dcm", stored, photometric=photometric, bits_stored=bits, syntax=syntax, **IDS)
    assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == TRANSFER_SYNTAXES[syntax]
    image = read_dicom(path)
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == display.shape
    assert (image.original_height, image.original_width) == display.shape
    expected = np.rint(display * 255)
    tolerance = 3.0 if syntax == "jpeg_baseline" else 0.51  # lossy JPEG vs lossless syntaxes
    assert np.abs(image.pixels - expected).mean() <= tolerance
    assert image.pixels.min() == 0 and image.pixels.max() == 255


def test_header_fields_keep_the_competition_ids_quietly(tmp_path, recwarn):
    path = write_dicom(tmp_path / "x.dcm", display_to_stored(display_pattern(), bits_stored=12), bits_stored=12, **IDS)
    header = read_dicom(path).header
    assert (header.patient_id, header.study_uid, header.series_uid, header.image_uid) == tuple(IDS.values())
    assert header.photometric == "MONOCHROME2" and header.bits_stored == 12
    assert read_dicom_header(path) == header
    assert not [w for w in recwarn if "UI" in str(w.message)]


@pytest.mark.parametrize("bits", [8, 12, 14, 16])
def test_bit_depths(tmp_path, bits):
    display = display_pattern()
    path = write_dicom(tmp_path / "x.dcm", display_to_stored(display, bits_stored=bits), bits_stored=bits)
    assert np.abs(read_dicom(path).pixels - np.rint(display * 255)).max() <= 1


def test_window_is_applied_after_the_modality_rescale(tmp_path):
    ramp = np.tile(np.arange(4096, dtype=np.uint16), (4, 1))
    # Rescaled values are 2 * stored; the window [3072, 5120] in rescaled units is stored [1536, 2560].
    path = write_dicom(tmp_path / "w.dcm", ramp, bits_stored=12, rescale=(2.0, 0.0), window=(4096.5, 2049))
    pixels = read_dicom(path).pixels[0].astype(int)
    assert (pixels[:1530] == 0).all() and (pixels[2566:] == 255).all()
    inside = pixels[1600:2500]
    assert np.all(np.diff(inside) >= 0) and 0 < inside[0] < inside[-1] < 255
    assert abs(pixels[2048] - 128) <= 1


def test_rescale_with_intercept_and_no_window_is_min_max(tmp_path):
    display = display_pattern()
    stored = display_to_stored(display, bits_stored=12)
    plain = read_dicom(write_dicom(tmp_path / "a.dcm", stored, bits_stored=12)).pixels
    rescaled = read_dicom(write_dicom(tmp_path / "b.dcm", stored, bits_stored=12, rescale=(0.5, -1024))).pixels
    np.testing.assert_array_equal(plain, rescaled)


def test_constant_image_gives_zeros_not_a_division_by_zero(tmp_path):
    path = write_dicom(tmp_path / "c.dcm", np.full((32, 40), 700, np.uint16), bits_stored=12)
    image = read_dicom(path, dtype="float32")
    assert image.pixels.dtype == np.float32 and not image.pixels.any()


def test_multi_frame_gives_the_first_frame(tmp_path):
    frames = np.stack([display_to_stored(display_pattern(), bits_stored=12),
                       np.zeros((96, 120), np.uint16), np.full((96, 120), 4095, np.uint16)])
    path = write_dicom(tmp_path / "m.dcm", frames, bits_stored=12, syntax="rle")
    assert np.abs(read_dicom(path).pixels - np.rint(display_pattern() * 255)).max() <= 1


@pytest.mark.parametrize("syntax", ["explicit_le", "jpeg_baseline"])
def test_colour_becomes_luminance(tmp_path, syntax):
    gray = np.rint(display_pattern() * 255).astype(np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits_stored=8, syntax=syntax)
    pixels = read_dicom(path).pixels
    assert pixels.ndim == 2 and np.abs(pixels.astype(int) - gray).mean() < 3


def test_resize_square_and_shorter_side(tmp_path):
    path = write_dicom(tmp_path / "r.dcm", display_to_stored(display_pattern(96, 120), bits_stored=12), bits_stored=12)
    assert read_dicom(path, 64).pixels.shape == (64, 64)
    kept = read_dicom(path, 48, keep_aspect=True)
    assert kept.pixels.shape == (48, 60) and (kept.original_height, kept.original_width) == (96, 120)
    assert read_dicom(path, 32, dtype="float32").pixels.max() <= 1.0


def test_reader_matches_the_full_resolution_recipe(tmp_path):
    """The lookup-table path equals min/max-normalising every pixel, then resizing."""
    rng = np.random.default_rng(0)
    stored = (display_to_stored(display_pattern(400, 500), bits_stored=12).astype(int)
              + rng.integers(-40, 40, (400, 500))).clip(0, 4095).astype(np.uint16)
    path = write_dicom(tmp_path / "f.dcm", stored, bits_stored=12, photometric="MONOCHROME1",
                       window=(2000, 3000))
    ds = pydicom.dcmread(path)
    values = pydicom.pixels.apply_voi_lut(stored.astype(float), ds)
    values = values.max() - values
    full = np.rint((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)
    expected = cv2.resize(full, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(read_dicom(path, 128).pixels.astype(int) - expected).mean() < 1.0


# ---- bad input: always DicomReadError naming the file and the reason ---------------------------------

def _expect_error(path_or_bytes, fragment, **kwargs):
    with pytest.raises(DicomReadError) as info:
        read_dicom(path_or_bytes, **kwargs)
    assert fragment in info.value.reason
    if not isinstance(path_or_bytes, bytes):
        assert str(path_or_bytes) in str(info.value)


def test_errors_name_the_file_and_the_reason(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", display_to_stored(display_pattern(), bits_stored=12), bits_stored=12)
    _expect_error(tmp_path / "missing.dcm", "not found")
    (tmp_path / "empty.dcm").write_bytes(b"")
    _expect_error(tmp_path / "empty.dcm", "empty file")
    _expect_error(b"", "empty file")
    (tmp_path / "text.dcm").write_text("this is not a radiograph\n" * 20)
    with pytest.raises(DicomReadError) as info:
        read_dicom(tmp_path / "text.dcm")
    assert "text.dcm" in str(info.value)
    data = good.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomReadError):
        read_dicom(tmp_path / "truncated.dcm")
    _expect_error(good, "too large", max_pixels=100)


def test_no_pixel_data_and_zero_size(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", display_to_stored(display_pattern(), bits_stored=12), bits_stored=12)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    _expect_error(tmp_path / "nopix.dcm", "no pixel data")
    ds.Rows = 0
    ds.PixelData = b""
    ds["PixelData"].VR = "OW"
    ds.save_as(tmp_path / "zero.dcm")
    _expect_error(tmp_path / "zero.dcm", "zero-size")


def test_a_syntax_without_a_decoder_is_a_clear_error(tmp_path):
    path = write_dicom(tmp_path / "mpeg.dcm", display_to_stored(display_pattern(), bits_stored=8), bits_stored=8,
                       syntax="jpeg_baseline")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder installed
    ds.save_as(path)
    _expect_error(path, "cannot decode")


# ---- real radiographs -------------------------------------------------------------------------------

def test_real_siim_acr_dicom_and_its_monochrome1_twin(shared):
    folder = shared("real-xrays")
    normal = read_dicom(folder / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    twin = read_dicom(folder / "Fake_MONOHR1.dcm")
    assert normal.pixels.shape == (1024, 1024) and (normal.original_height, normal.original_width) == (1024, 1024)
    assert twin.header.photometric == "MONOCHROME1"
    # Same stored pixels: a correct reader shows the twin inverted.
    assert np.abs(twin.pixels.astype(int) - (255 - normal.pixels.astype(int))).mean() < 1.0
    # Lungs (centre-left / centre-right) are darker than the mediastinum in the normal display.
    assert normal.pixels[300:700, 200:400].mean() < normal.pixels[300:700, 480:540].mean()


def test_real_png_and_jpeg_through_the_same_reader(shared):
    folder = shared("real-xrays")
    nih = read_radiograph(folder / "00000001_000.png", 256)
    assert nih.pixels.shape == (256, 256) and nih.header is None
    assert (nih.original_height, nih.original_width) == (512, 512)  # the shared copies are 512 px
    covid = read_radiograph((folder / "covid-19-pneumonia-58-prior.jpg").read_bytes(), name="upload.jpg")
    assert covid.pixels.ndim == 2 and covid.pixels.dtype == np.uint8
    dicom_bytes = (folder / "Fake_MONOHR1.dcm").read_bytes()
    assert read_radiograph(dicom_bytes, 128, name="upload.dcm").header.photometric == "MONOCHROME1"
    with pytest.raises(DicomReadError, match="upload.txt"):
        read_radiograph(b"hello", name="upload.txt")


def test_32_bit_and_signed_pixels(tmp_path):
    path = write_dicom(tmp_path / "s.dcm", display_to_stored(display_pattern(), bits_stored=12), bits_stored=12)
    ds = pydicom.dcmread(path)
    for dtype, bits, representation in ((np.int16, 16, 1), (np.uint32, 32, 0)):
        values = (display_pattern() * 3000 - (1000 if representation else 0)).astype(dtype)
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = representation
        ds.PixelData = values.tobytes()
        ds.save_as(tmp_path / "v.dcm")
        pixels = read_dicom(tmp_path / "v.dcm", 48).pixels
        expected = cv2.resize(np.rint(display_pattern() * 255), (48, 48), interpolation=cv2.INTER_AREA)
        assert np.abs(pixels - expected).mean() < 1.0, dtype


def _deflated_dicom(rows: int, cols: int, syntax=None) -> bytes:
    """A 12-bit MONOCHROME2 DICOM, by default in the Deflated Explicit VR Little Endian syntax (mostly
    zeros: it compresses about 700:1)."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax or DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.zeros((rows, cols), np.uint16)
    pixels[rows // 4: rows // 2, cols // 4: cols // 2] = 3000
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_deflated_dicom_is_refused_before_it_expands_past_the_bound():
    from utils.data.dicom import ImageSizeError, read_radiograph

    bomb = _deflated_dicom(2000, 2000)  # 8 MB of pixels in about 12 KB
    assert len(bomb) < 50_000
    assert read_radiograph(bomb, 64).pixels.shape == (64, 64)  # trusted input (no bound): read as usual
    with pytest.raises(ImageSizeError, match="deflate-compressed DICOM expands beyond"):
        read_radiograph(bomb, 64, max_pixels=1_000_000)
    small = read_radiograph(_deflated_dicom(200, 300), 64, max_pixels=1_000_000)
    assert (small.original_height, small.original_width) == (200, 300) and small.pixels.max() == 255


def test_not_a_dicom_and_truncated_dicoms_say_so():
    from pydicom.uid import ExplicitVRLittleEndian

    data = _deflated_dicom(40, 30, ExplicitVRLittleEndian)  # 2,400 pixel bytes at the end of the file
    png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    for bad, reason in ((b"hello, not a DICOM\n" * 20, "not a DICOM file (no DICM marker"),
                        (png, "not a DICOM file (a PNG image with a DICOM name?)"),
                        (data[:-1000], "truncated: 1400 of 2400 pixel bytes"),
                        (data[:300], "truncated")):
        with pytest.raises(DicomReadError, match=re.escape(reason)):
            read_dicom(bad, 16, name="x.dcm")
    assert read_dicom(data, 16).original_height == 40


def test_rows_that_disagree_with_the_pixel_data_are_refused():
    import io

    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(_deflated_dicom(40, 30, ExplicitVRLittleEndian)))
    ds.Rows = 20  # the 40-row image would decode as the first of two 20-row "frames"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(DicomReadError, match=r"pixel data holds 2400 bytes but Rows x Columns x frames"):
        read_dicom(buffer.getvalue(), 16, name="x.dcm")


def _pydicom_corpus() -> list[Path]:
    """The test files shipped inside the installed pydicom (read from its folder: pydicom's own lookup
    may try to download its external ones)."""
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in (".py", ".pyc", ".json",
                                                                                            ".txt", ".gz", ".bz2"))


def test_the_reader_reads_every_image_of_pydicoms_corpus_that_pydicom_reads():
    """Each file pydicom decodes to an image of at least MIN_SIDE px a side is read at the same height and
    width; each one pydicom refuses is a DicomReadError naming the file, never another exception."""
    import warnings

    from pydicom.pixels import pixel_array

    from utils.data.dicom import MIN_SIDE

    files = _pydicom_corpus()
    if len(files) < 20:
        pytest.skip("pydicom's test files are not installed")
    read = refused = 0
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = pixel_array(pydicom.dcmread(path, force=True), index=0)
        except Exception:  # noqa: BLE001 - pydicom refuses it, for whatever reason
            frame = None
        if frame is not None and (frame.ndim < 2 or min(frame.shape[:2]) < MIN_SIDE):
            continue
        if frame is None:
            with pytest.raises(DicomReadError) as caught:
                read_radiograph(path)
            assert caught.value.path == str(path)
            refused += 1
            continue
        radiograph = read_radiograph(path)
        assert (radiograph.original_height, radiograph.original_width) == frame.shape[:2], path.name
        assert radiograph.pixels.shape == frame.shape[:2] and radiograph.pixels.dtype == np.uint8, path.name
        read += 1
    assert read >= 40 and refused >= 1, (read, refused)
