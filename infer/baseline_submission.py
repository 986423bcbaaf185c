"""Trivial baselines every model must beat, written as a valid submission.

    python infer/baseline_submission.py --data-dir DIR --prepared meta.csv --out baseline.csv [--kind prior-boxes]

Kinds:
  prior        study rows: the training class frequencies; image rows: ``none`` with the training
               share of images without opacity, no boxes.
  prior-boxes  as ``prior`` plus one fixed box in the middle of each lung, scored with the share
               of images with opacity.
"""

from __future__ import annotations

import argparse

import pandas as pd

from utils.data.submission import read_submission, write_submission
from utils.scoring.baselines import baseline_submission


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="competition folder with test/ and sample_submission.csv")
    parser.add_argument("--prepared", required=True, help="meta.csv of the prepared training set (priors)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kind", choices=("prior", "prior-boxes"), default="prior-boxes")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    meta = pd.read_csv(args.prepared, dtype={"image_id": str, "study_id": str, "patient_id": str})
    submission = baseline_submission(args.data_dir, meta, args.kind)
    sample = read_submission(f"{args.data_dir}/sample_submission.csv")
    print(f"wrote {write_submission(submission, args.out, sample)} ({len(submission)} rows)")


if __name__ == "__main__":
    main()
