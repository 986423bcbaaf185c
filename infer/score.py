"""Score a submission with the competition metric (VOC 2010 mAP at IoU > 0.5 over six classes).

    python infer/score.py submission.csv --image-labels train_image_level.csv \
        --study-labels train_study_level.csv [--json]

Only the ids of the ground truth are scored; an id missing from the submission predicts nothing.
"""

from __future__ import annotations

import argparse
import json

from utils.metric import format_score_table, ground_truth_from_files, score
from utils.submission import read_submission


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submission", help="submission CSV (id,PredictionString)")
    parser.add_argument("--image-labels", required=True, help="ground truth in train_image_level.csv format")
    parser.add_argument("--study-labels", required=True, help="ground truth in train_study_level.csv format")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    truth = ground_truth_from_files(args.image_labels, args.study_labels)  # its errors name the label file
    try:
        result = score(read_submission(args.submission), truth)
    except ValueError as err:  # a malformed prediction string: name the submission, no traceback
        raise SystemExit(f"{args.submission}: {err}") from None
    print(json.dumps(result) if args.json else format_score_table(result))
    return result


if __name__ == "__main__":
    main()
