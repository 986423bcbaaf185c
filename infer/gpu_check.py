"""The figures only a GPU can give, in one command that fits a short GPU loan (``make gpu-check``).

    python infer/gpu_check.py --out runs/gpu-check [--data ../shared/siim-256] [--patients train_meta.csv]
        [--budget 480] [--smoke]

Parts, in this order, each a child process with a time cap (its own, and never past ``--budget``
seconds in all); a part that does not finish is reported as such, never silently dropped:

    inference  prediction with the full config (1,024 px, 5 folds of every model, random weights,
               flip TTA) from real-size DICOMs: images/s for decoding, each model, fusion and end to
               end (fusion in processes and inline), and the notebook time for 1,263 and 6,000
               images (``infer/benchmark.py inference``)
    training   backbone training images/s, full vs mixed precision (ResNeXt-50, 224 px, batch 32:
               ``infer/benchmark.py training``)
    loop       each kind's training loop beside its bare model and its data loader alone (the full
               config's sizes, each kind also channels-last, on the subset of ``--data`` prepared
               first): whether the GPU's loops are input-bound (``infer/benchmark.py loop``)
    epochs     one training epoch of every registered kind (Faster R-CNN, YOLO, the study model) at the
               full config's sizes on a subset of ``--data``: images/s and peak GPU memory (each kind's
               ``speed_run_overrides`` and ``first_epoch_figures``)
    real256    the real-data recipe (``train/configs/real256.yaml``, fold 0 of every model) trained on
               the resized copy ``--data`` on this device: stage times and out-of-fold CV (about 6
               minutes on an H100: give it a call of its own, ``--parts real256 --budget 420``)

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (the table, also printed) and each part's log.
``--smoke`` runs every part at toy sizes on whatever device there is (the CPU in the tests), on a
synthetic resized copy when ``--data`` is absent, so the command is known to work before any GPU time
is spent.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from utils.benchmarking.gpu_check import PARTS, ROOT, run_check
from utils.core.config import float_in, int_in, worker_count


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "siim-256",
                        help="resized copy of the competition for the real-data parts")
    parser.add_argument("--patients", type=Path, default=ROOT.parent / "shared" / "siim-labels" / "train_meta.csv",
                        help="image -> patient table for the folds (absent: studies stand for patients)")
    parser.add_argument("--subset", type=int_in(1, 1_000_000), default=800,
                        help="training images for the one-epoch timings")
    parser.add_argument("--budget", type=float_in(1, 86_400), default=480, help="seconds for all parts together")
    parser.add_argument("--workers", type=worker_count, default=min(8, os.cpu_count() or 1),
                        help="data loading processes")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--smoke", action="store_true", help="toy sizes, on any device (the tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_check(args.out, args.data, args.patients, args.subset, args.budget, args.workers, args.parts,
                     args.smoke)


if __name__ == "__main__":
    sys.exit(main())
