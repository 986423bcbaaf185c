"""Train any registered model kind (:mod:`utils.kinds`, the built-in ones and those of the
``siim_covid.kinds`` entry points) on the prepared SIIM images, one model per fold: the stage command
``train/train_all.py`` runs for a kind without a script of its own.

    python train/train_kind.py --kind SECTION --prepared runs/prepared/meta.csv --out runs/SECTION
        [--config train/configs/full.yaml] [--set KEY=VALUE ...] [--weights-dir runs/weights] [--resume]

Writes what every kind writes (:func:`utils.kinds.train_folds`): config.yaml, the folds' run folders,
oof_predictions.csv and the kind's out-of-fold report; registers the fold weights in
--weights-dir/manifest.json.
"""

from __future__ import annotations

import argparse
import sys

from utils.kinds.registry import KINDS
from utils.pipeline.cli import kind_parser, run_kind


def get_args_parser(kind=None) -> argparse.ArgumentParser:
    """The command line of ``kind`` (its own options: ``--resume`` only for an engine kind) plus
    ``--kind``; without a kind, the first kind's (what --help shows)."""
    parser = kind_parser(kind or next(iter(KINDS.values())), __doc__, f"runs/{kind.name if kind else 'KIND'}")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS), help="the kind's config section")
    return parser


def main(argv: list[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--kind", choices=sorted(KINDS))
    known, _ = first.parse_known_args(argv)
    kind = KINDS.get(known.kind)
    parser = get_args_parser(kind)
    if kind is None:
        parser.parse_args(argv)  # --help, or the error of a missing or unknown --kind
    return run_kind(kind, __doc__, f"runs/{kind.name}", argv, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
