"""Decode the competition's training DICOMs once into PNGs per size, with meta.csv and folds.

    python train/prepare.py --data-dir DIR --out runs/prepared --size 1024 --size 512 --workers 4

Resumable: images already decoded (listed in headers.jsonl with their PNGs present) are skipped.
A DICOM that cannot be read is listed in failures.csv with its reason and skipped.
"""

from __future__ import annotations

import argparse
import logging

from utils.labels import DUPLICATE_POLICIES, DUPLICATES_KEEP_BOXED
from utils.prepare import prepare_competition


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="competition folder (train/, train_*_level.csv)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, action="append", dest="sizes",
                        help="square PNG size; repeat for several (default 1024)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42, help="fold assignment seed")
    parser.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default=DUPLICATES_KEEP_BOXED,
                        help="studies with several images: keep only the boxed one of a positive study "
                             "(others marked unused), or keep all")
    return parser


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    sizes = tuple(args.sizes or [1024])
    table = prepare_competition(args.data_dir, args.out, sizes, args.workers, args.folds, args.seed,
                                args.duplicates)
    used = int(table["used"].sum())
    print(f"meta.csv: {len(table)} images ({used} used for training) in {table['fold'].nunique()} folds -> {args.out}")


if __name__ == "__main__":
    main()
