"""Train the ultralytics YOLO opacity detector, one model per fold, at ``image_size``; predict the
held-out fold at ``predict_size`` (1024 in full.yaml).

    python train/train_yolo.py --prepared runs/prepared/meta.csv --out runs/yolo
        [--config train/configs/full.yaml] [--set model=yolov8m.yaml folds=[0,1] device=0,1]
        [--weights-dir runs/weights]

The prepared images are exported once to YOLO format under --out/dataset (``images/`` hard links,
``labels/`` with ``0 cx cy w h`` per box, an empty file for an image without opacity); each fold's
``data.yaml`` and image lists are written in its run folder. ultralytics runs offline with its
settings in --out/ultralytics_settings. Multi-GPU: ``--set device=0,1`` (ultralytics' own DDP).

Writes to --out: config.yaml, fold<k>/ (ultralytics' run: weights/best.pt, results.csv, args.yaml;
plus data.yaml and loss_curve.png), oof_predictions.csv and oof_scores.json / .txt (opacity AP@0.5
with the competition metric beside the fixed-box baseline, like train/train_frcnn.py). Registers the
fold weights as model "yolo" in --weights-dir/manifest.json. The model kind itself is
:mod:`utils.kinds.yolo.training`.
"""

from __future__ import annotations

import sys

from utils.kinds.registry import KINDS
from utils.pipeline.cli import kind_parser, run_kind

KIND = KINDS["yolo"]


def get_args_parser():
    return kind_parser(KIND, __doc__, "runs/yolo")


def main(argv: list[str] | None = None) -> int:
    return run_kind(KIND, __doc__, "runs/yolo", argv, parser=get_args_parser())


if __name__ == "__main__":
    sys.exit(main())
