"""Train the study-level classifier (negative / typical / indeterminate / atypical, plus the image-level
"none") on the prepared SIIM images, one model per fold, trunk initialised from the NIH backbone.

    python train/train_study.py --prepared runs/prepared/meta.csv --out runs/study
        [--config train/configs/full.yaml] [--set backbone=runs/backbone/best.pt folds=[0,1]]
        [--weights-dir runs/weights] [--resume]

Writes to --out: config.yaml, fold<k>/ (engine run folder: last.pt, best.pt, metrics.csv,
loss_curve.png), oof_predictions.csv (every image of each trained fold, shared prediction schema),
oof_scores.json / oof_scores.txt (study mAP, none AP, per-class AP with the competition metric).
The held-out fold is predicted through the config's ``tta_views`` (:mod:`utils.kinds.study.tta`), as at test time.
Registers each fold's best weights as model "study" in --weights-dir/manifest.json. The model kind
itself (config, network, datasets, losses, member) is the package :mod:`utils.kinds.study`.
"""

from __future__ import annotations

import sys

from utils.kinds.registry import KINDS
from utils.pipeline.cli import kind_parser, run_kind

KIND = KINDS["study"]


def get_args_parser():
    return kind_parser(KIND, __doc__, "runs/study")


def main(argv: list[str] | None = None) -> int:
    return run_kind(KIND, __doc__, "runs/study", argv, parser=get_args_parser())


if __name__ == "__main__":
    sys.exit(main())
