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

import pandas as pd

from utils.data.submission import SubmissionError, read_submission, submission_problems
from utils.scoring.metric import format_score_columns, format_score_table, ground_truth_from_files, score


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
    try:
        truth = ground_truth_from_files(args.image_labels, args.study_labels)
    except (OSError, KeyError, ValueError, pd.errors.EmptyDataError) as err:
        raise SystemExit(f"label files {args.image_labels}, {args.study_labels}: not usable "
                         f"({type(err).__name__}: {err}); expected the competition's train_*_level.csv") from None
    results = {}
    for path in args.submissions:
        # Only a valid submission is scored: a duplicate row, a confidence outside [0, 1], x2 < x1 or a
        # study class on an image row would change the figure without a word.
        try:
            submission = read_submission(path)
        except SubmissionError as err:
            raise SystemExit(f"{path}: {'; '.join(err.problems)}") from None
        problems = submission_problems(submission)
        if problems:
            raise SystemExit(f"{path}: not scored, {len(problems)} problem(s) (infer/validate_submission.py lists "
                             f"them all):\n" + "\n".join(f"  - {p}" for p in problems[:20]))
        results[path] = score(submission, truth)
    if len(results) == 1:
        (result,) = results.values()
        print(json.dumps(result) if args.json else format_score_table(result))
        return result
    print(json.dumps(results) if args.json else format_score_columns({Path(p).stem: r for p, r in results.items()}))
    return results


if __name__ == "__main__":
    main()
