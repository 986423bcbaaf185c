"""The decoding cache of preparation: every image decoded once (DICOM through the project's reader, or a
resized copy's JPG/PNG) into lossless PNGs per size, one line per decoded image in ``headers.jsonl``
(ids, original size, a hash of the pixels), so that a stopped run decodes only what is missing; in worker
processes that die with their parent."""

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
from tqdm import tqdm

from utils.core.files import atomic_path, describe_write_failure, remove_stale_temporaries
from utils.core.interrupt import dies_with_this_process
from utils.data.dicom import MAX_PIXELS, DicomReadError, read_radiograph, resize_image
from utils.data.inputs import (
    find_dicoms,
)

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
