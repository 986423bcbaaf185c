"""Score a submission with the competition metric (VOC 2010 mAP at IoU > 0.5 over six classes).

    python infer/score.py submission.csv [other.csv ...] --image-labels train_image_level.csv \
        --study-labels train_study_level.csv [--json]

With several submissions, prints one column per submission (e.g. the model beside the baselines).

Only the ids of the ground truth are scored; an id missing from the submission predicts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from utils.metric import format_score_columns, format_score_table, ground_truth_from_files, score
from utils.submission import read_submission


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", nargs="+", help="submission CSV(s) (id,PredictionString)")
    parser.add_argument("--image-labels", required=True, help="ground truth in train_image_level.csv format")
    parser.add_argument("--study-labels", required=True, help="ground truth in train_study_level.csv format")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def main(argv=None) -> dict:
    """Prints and returns the score of the first submission (and of each, with several)."""
    args = get_args_parser().parse_args(argv)
    truth = ground_truth_from_files(args.image_labels, args.study_labels)  # its errors name the label file
    results = {}
    for path in args.submissions:
        try:
            results[path] = score(read_submission(path), truth)
        except ValueError as err:  # a malformed prediction string: name the submission, no traceback
            raise SystemExit(f"{path}: {err}") from None
    if len(results) == 1:
        (result,) = results.values()
        print(json.dumps(result) if args.json else format_score_table(result))
        return result
    print(json.dumps(results) if args.json else format_score_columns({Path(p).stem: r for p, r in results.items()}))
    return results


if __name__ == "__main__":
    main()
