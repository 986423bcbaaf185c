"""Write a synthetic dataset in the competition's layout (or NIH / RSNA style) for demos and tests.

    python train/make_synthetic.py --out runs/synthetic --train-studies 60 --test-studies 20 --seed 0
    python train/make_synthetic.py --format nih --out runs/synthetic_nih --images 200
    python train/make_synthetic.py --format rsna --out runs/synthetic_rsna --images 100
    python train/make_synthetic.py --format resized --out runs/synthetic_256 --train-studies 60 --resize 256

``--format resized`` writes the competition folder to ``OUT/dicom`` and, from it, a resized copy in
the layout of the public 256/512/1024 px datasets to ``OUT`` (``train/<id>.jpg``, ``test/<id>.jpg``,
``meta.csv`` with the original sizes, the label CSVs, ``train_meta.csv``/``test_meta.csv``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.core.config import MAX_IMAGE_SIZE, MAX_SEED, int_in
from utils.data.resized_copy import make_resized_copy
from utils.data.synthetic import make_nih_dataset, make_rsna_dataset, make_siim_dataset


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=("siim", "resized", "nih", "rsna"), default="siim")
    parser.add_argument("--train-studies", type=int_in(1, 100_000), default=60, help="siim: studies in train/")
    parser.add_argument("--test-studies", type=int_in(0, 100_000), default=20, help="siim: studies in test/")
    parser.add_argument("--images", type=int_in(1, 1_000_000), default=100, help="nih / rsna: number of images")
    parser.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    parser.add_argument("--max-size", type=int_in(32, MAX_IMAGE_SIZE), default=256,
                        help="longest image side in pixels (siim, rsna); real radiographs are ~2500-3500")
    parser.add_argument("--resize", type=int_in(16, MAX_IMAGE_SIZE), default=256,
                        help="resized: side of the square JPEGs")
    parser.add_argument("--image-size", type=int_in(16, MAX_IMAGE_SIZE), default=128,
                        help="nih: PNG side (the real set is 1024)")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.format == "siim":
        counts = make_siim_dataset(args.out, args.train_studies, args.test_studies, args.seed, args.max_size)
        print(f"wrote {counts['train']} train and {counts['test']} test images to {args.out}")
    elif args.format == "resized":
        counts = make_siim_dataset(Path(args.out) / "dicom", args.train_studies, args.test_studies, args.seed,
                                   args.max_size)
        make_resized_copy(Path(args.out) / "dicom", args.out, args.resize)
        print(f"wrote {counts['train']} train and {counts['test']} test images at {args.resize} px to {args.out} "
              f"(their DICOMs and test truth in {Path(args.out) / 'dicom'})")
    elif args.format == "nih":
        make_nih_dataset(args.out, args.images, args.seed, args.image_size)
        print(f"wrote {args.images} NIH-style images to {args.out}")
    else:
        make_rsna_dataset(args.out, args.images, args.seed, args.max_size)
        print(f"wrote {args.images} RSNA-style images to {args.out}")


if __name__ == "__main__":
    main()
