"""Speed benchmarks: median of repeats, each compared with its baseline in the same run.

    python infer/benchmark.py reader [--files 6] [--repeats 5] [--size 1024] [--out runs/bench/reader.json]

``reader``: full-size 16-bit DICOMs (about 2500 x 3000, written by the synthetic generator, with and
without a VOI window, MONOCHROME1 and 2) decoded and resized to ``--size`` by the project's reader
and by the widely copied recipe (pixel_array -> apply_voi_lut -> invert -> min/max -> uint8 ->
resize), one thread each, on the same files. Reports images per second per core for both, the
speed-up, and the mean absolute difference between the two outputs in grey levels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.pixels import apply_voi_lut

from utils.dicom import lenient_dicom_values, read_dicom, read_dicom_header
from utils.synthetic import display_to_stored, render_chest, write_dicom


def copied_recipe(path, size: int) -> np.ndarray:
    """The recipe found in most public notebooks of this competition (the baseline), with area resize."""
    with lenient_dicom_values():
        ds = pydicom.dcmread(path)
        data = apply_voi_lut(ds.pixel_array, ds)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            data = np.amax(data) - data
        data = data - np.min(data)
        data = data / np.max(data)
        data = (data * 255).astype(np.uint8)
    return cv2.resize(data, (size, size), interpolation=cv2.INTER_AREA)


def write_full_size_files(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Real-size 16-bit radiographs in the competition's common forms (no rescale, so that the
    copied recipe, which ignores the modality rescale, computes the same image)."""
    rng = np.random.default_rng(seed)
    forms = [("MONOCHROME2", 12, True), ("MONOCHROME2", 16, False), ("MONOCHROME1", 14, True),
             ("MONOCHROME2", 12, False), ("MONOCHROME1", 12, False), ("MONOCHROME2", 14, True)]
    paths = []
    for k in range(count):
        photometric, bits, windowed = forms[k % len(forms)]
        height, width = int(rng.integers(2300, 2800)), int(rng.integers(2800, 3200))
        stored = display_to_stored(render_chest(rng, height, width), bits_stored=bits, photometric=photometric)
        top = (1 << bits) - 1
        window = (top * 0.5, top * 0.8) if windowed else None
        paths.append(write_dicom(folder / f"full_{k}.dcm", stored, photometric=photometric, bits_stored=bits,
                                 window=window))
    return paths


def _timed_pass(function, paths, size) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    outputs = [function(p, size) for p in paths]
    return time.perf_counter() - start, outputs


def benchmark_reader(files: int = 6, repeats: int = 5, size: int = 1024) -> dict:
    cv2.setNumThreads(1)  # per-core figures for both sides
    with tempfile.TemporaryDirectory() as folder:
        paths = write_full_size_files(Path(folder), files)
        ours = lambda p, s: read_dicom(p, s).pixels  # noqa: E731
        _, reference = _timed_pass(copied_recipe, paths, size)  # warm the page cache
        _, project = _timed_pass(ours, paths, size)
        baseline_times, project_times = [], []
        for _ in range(repeats):
            baseline_times.append(_timed_pass(copied_recipe, paths, size)[0])
            project_times.append(_timed_pass(ours, paths, size)[0])
        example = read_dicom_header(paths[0])
    differences = [float(np.abs(a.astype(int) - b.astype(int)).mean()) for a, b in zip(project, reference)]
    baseline_rate = files / statistics.median(baseline_times)
    project_rate = files / statistics.median(project_times)
    return {
        "benchmark": "reader",
        "files": files,
        "repeats": repeats,
        "example_size": [example.rows, example.columns],
        "output_size": size,
        "threads": 1,
        "baseline_images_per_s": round(baseline_rate, 2),
        "project_images_per_s": round(project_rate, 2),
        "speedup": round(project_rate / baseline_rate, 2),
        "mean_abs_difference_grey_levels": round(float(np.mean(differences)), 3),
        "max_mean_abs_difference_grey_levels": round(max(differences), 3),
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    reader = sub.add_parser("reader", help="DICOM decode + resize vs the copied recipe")
    reader.add_argument("--files", type=int, default=6)
    reader.add_argument("--repeats", type=int, default=5)
    reader.add_argument("--size", type=int, default=1024)
    reader.add_argument("--out", help="also write the JSON here")
    return parser


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    result = benchmark_reader(args.files, args.repeats, args.size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
