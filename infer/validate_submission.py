"""Check a submission against the competition's format; exits non-zero and lists every problem.

    python infer/validate_submission.py submission.csv --sample-submission sample_submission.csv
"""

from __future__ import annotations

import argparse
import sys

from utils.data.submission import SubmissionError, read_submission, sample_problems, submission_problems


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submission")
    parser.add_argument("--sample-submission", help="the competition's sample_submission.csv (checks the ids)")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        sample = read_submission(args.sample_submission) if args.sample_submission else None
        bad_sample = sample_problems(sample) if sample is not None else []
        if bad_sample:  # a header-only sample would make a 0-row submission "valid"
            raise SubmissionError(bad_sample, where=args.sample_submission)
        problems = submission_problems(read_submission(args.submission), sample)
    except SubmissionError as err:  # the file itself is unreadable: one line naming it
        print(f"{err.where}: {'; '.join(err.problems)}")
        return 1
    for problem in problems:
        print(problem)
    print(f"{args.submission}: {'valid' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
