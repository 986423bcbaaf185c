"""Train the Faster R-CNN opacity detector (ResNeXt-FPN, trunk from the NIH backbone), one model per
fold, at ``image_size`` (512 in full.yaml); predict the held-out fold at ``predict_size`` (1024).

    python train/train_frcnn.py --prepared runs/prepared/meta.csv --out runs/frcnn
        [--config train/configs/full.yaml] [--set backbone=runs/backbone/best.pt folds=[0,1]]
        [--pretrain-rsna RSNA_DIR | --init-from CHECKPOINT] [--weights-dir runs/weights] [--resume]

With ``--pretrain-rsna`` the same script first trains on an RSNA Pneumonia folder
(``stage_2_train_labels.csv``, ``stage_2_train_images/``; report section 2.2) for ``pretrain_epochs``,
holding out fold 0, and every SIIM fold starts from that run's best weights. ``--init-from`` starts
from any detector checkpoint instead (e.g. an earlier pre-training run).

Writes to --out: config.yaml, fold<k>/ (engine run folder: last.pt, best.pt, metrics.csv,
loss_curve.png), oof_predictions.csv (boxes of every image of the trained folds, shared schema),
oof_scores.json / oof_scores.txt (opacity AP@0.5 with the competition metric, beside the fixed-box
baseline); with --pretrain-rsna also rsna/ (prepared images and the same files). Registers the fold
weights as model "frcnn" in --weights-dir/manifest.json. The model kind itself is
:mod:`utils.kinds.frcnn.training`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from utils.kinds.registry import KINDS
from utils.pipeline.cli import kind_parser, run_kind

KIND = KINDS["frcnn"]
DEFAULT_OUT = "runs/frcnn"


def get_args_parser():
    parser = kind_parser(KIND, __doc__, DEFAULT_OUT)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--pretrain-rsna", type=Path, default=None, metavar="RSNA_DIR",
                       help="train on this RSNA Pneumonia folder first and start every fold from it")
    start.add_argument("--init-from", type=str, default=None, metavar="CHECKPOINT",
                       help="start every fold from this detector checkpoint (overrides init_from)")
    return parser


def start_from(config, args, options):
    """``--init-from`` or, with ``--pretrain-rsna``, the RSNA run's best weights (config.yaml names them)."""
    if args.init_from:
        config = dataclasses.replace(config, init_from=args.init_from)
    if args.pretrain_rsna is not None:
        config = dataclasses.replace(config, init_from=str(KIND.pretrain_on_rsna(args.pretrain_rsna, config, options)))
    return config


def main(argv: list[str] | None = None) -> int:
    return run_kind(KIND, __doc__, DEFAULT_OUT, argv, parser=get_args_parser(), before=start_from)


if __name__ == "__main__":
    sys.exit(main())
