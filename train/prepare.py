"""Decode the training images once into PNGs per size, with meta.csv and folds.

    python train/prepare.py --data-dir DIR --out runs/prepared --size 1024 --size 512 --workers 4
        [--patients train_meta.csv]

DIR is the competition's DICOM folder or a resized copy of it (train/<image_id>.jpg|png and meta.csv
with the original sizes), recognised by its contents. Resumable: images already decoded (listed in
headers.jsonl with their PNGs present) are skipped. An image that cannot be used (unreadable, no
original size, no label, missing) is listed in failures.csv with its reason and skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from utils.core.config import MAX_IMAGE_SIZE, MAX_SEED, MAX_WORKERS, int_in
from utils.core.files import describe_write_failure, is_write_failure
from utils.core.log import configure_logging
from utils.data.decoding_cache import PreparedWriteError
from utils.data.inputs import PreparationInputError
from utils.data.labels import DUPLICATE_POLICIES, DUPLICATES_KEEP_BOXED, LabelFileError
from utils.data.prepare import prepare_data


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True,
                        help="competition folder (train/<study>/<series>/*.dcm) or resized copy "
                             "(train/<id>.jpg|png, meta.csv), with train_*_level.csv")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int_in(16, MAX_IMAGE_SIZE), action="append", dest="sizes",
                        help="square PNG size; repeat for several (default 1024)")
    parser.add_argument("--workers", type=int_in(1, MAX_WORKERS), default=1, help="decoding processes")
    parser.add_argument("--folds", type=int_in(2, 100), default=5)
    parser.add_argument("--seed", type=int_in(0, MAX_SEED), default=42, help="fold assignment seed")
    parser.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default=DUPLICATES_KEEP_BOXED,
                        help="studies with several images: keep only the boxed one of a positive study "
                             "(others marked unused), or keep all")
    parser.add_argument("--patients", default=None,
                        help="image -> patient table (image_id/imageid, patient_id/patientid columns) for the "
                             "patient-grouped folds; resized copies carry no patient")
    return parser


def main(argv=None) -> None:
    configure_logging()
    parser = get_args_parser()
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or [1024])
    try:
        table = prepare_data(args.data_dir, args.out, sizes, args.workers, args.folds, args.seed, args.duplicates,
                             args.patients)
    except (PreparationInputError, LabelFileError) as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:  # the destination's fault (a full disk): the run stops, nothing written is lost
        if not is_write_failure(err):
            raise
        where = str(err) if isinstance(err, PreparedWriteError) else describe_write_failure(err)
        raise SystemExit(f"error: {where}; the images prepared so far are kept: make room and run it again "
                         "(they are not decoded again)") from None
    used = int(table["used"].sum())
    failures = len(pd.read_csv(Path(args.out) / "failures.csv"))
    print(f"meta.csv: {len(table)} images ({used} used for training) in {table['fold'].nunique()} folds -> {args.out}"
          + (f"; {failures} skipped, see {Path(args.out) / 'failures.csv'}" if failures else ""))


if __name__ == "__main__":
    main()
