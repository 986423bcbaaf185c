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
fold weights as model "yolo" in --weights-dir/manifest.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from train.cli import add_run_arguments, configure_logging
from utils.config import load_section, parse_overrides, save_config
from utils.detection import read_detection_table, write_detector_report
from utils.engine import copy_atomic, plot_loss_curve, write_metrics_csv
from utils.manifest import register_model
from utils.predictions import detection_rows
from utils.prepare import fold_split, select_folds
from utils.yolo import (
    SETTINGS_DIR,
    export_yolo_images,
    import_ultralytics,
    predict_yolo,
    resolve_yolo_device,
    results_history,
    write_data_yaml,
)

log = logging.getLogger("train_yolo")
SECTION = "yolo"
MODEL_NAME = "yolo"


@dataclass
class YoloConfig:
    model: str = "yolov8s.yaml"
    image_size: int = 512
    predict_size: int = 1024
    folds: list[int] | None = None
    epochs: int = 30
    batch_size: int = 16
    optimizer: Literal["SGD", "AdamW", "auto"] = "SGD"
    lr: float = 0.01
    lr_floor: float = 0.05
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    mosaic: float = 1.0
    fliplr: float = 0.5
    amp: bool = True
    score_threshold: float = 0.001
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    workers: int = 8
    seed: int = 42
    device: str = "auto"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="meta.csv written by train/prepare.py")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where to copy the fold weights and register them in manifest.json")
    add_run_arguments(parser, SECTION, "runs/yolo", resume=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    config = load_section(args.config, SECTION, YoloConfig, parse_overrides(args.overrides))
    args.out.mkdir(parents=True, exist_ok=True)
    save_config(config, args.out / "config.yaml", SECTION)
    ultralytics = import_ultralytics((args.out / SETTINGS_DIR).resolve())
    model_source = config.model
    if model_source.endswith(".pt") and not Path(model_source).is_file():
        raise SystemExit(f"{model_source}: weights file not found (nothing is downloaded; pass a local .pt or "
                         f"a model yaml such as yolov8s.yaml)")

    try:
        table = read_detection_table(args.prepared, config.image_size, config.predict_size)
        folds = select_folds(table, config.folds, args.prepared)
    except (OSError, ValueError) as err:
        raise SystemExit(str(err)) from err
    used = table[table["used"]]
    # Exported once for every fold: the used images at the training size.
    table.loc[used.index, "yolo_path"] = export_yolo_images(used, args.out / "dataset")
    log.info("%d images (%d used for training) exported to %s; training folds %s", len(table), len(used),
             args.out / "dataset", folds)

    oof, best_weights = [], {}
    for fold in folds:
        best_weights[fold], predictions = train_fold(ultralytics, table, fold, config, args)
        oof.append(predictions)
    write_detector_report(pd.concat(oof, ignore_index=True), table[table["fold"].isin(folds)], args.out)
    if args.weights_dir is not None:
        register_weights(best_weights, config, args.weights_dir)
    return 0


def train_fold(ultralytics, table: pd.DataFrame, fold: int, config: YoloConfig, args) -> tuple[Path, pd.DataFrame]:
    """Train on the used images of the other folds, validate on this fold's used images, then predict
    every image of this fold at ``predict_size``."""
    try:
        train, val, held_out = fold_split(table, fold, args.prepared)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    run_dir = (args.out / f"fold{fold}").resolve()
    data_yaml = write_data_yaml(run_dir, train["yolo_path"], val["yolo_path"])
    device = resolve_yolo_device(config.device)
    model = ultralytics.YOLO(config.model)
    model.train(
        data=str(data_yaml), project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
        imgsz=config.image_size, epochs=config.epochs, batch=config.batch_size, device=device,
        workers=config.workers, seed=config.seed, deterministic=True, optimizer=config.optimizer,
        lr0=config.lr, lrf=config.lr_floor, cos_lr=True, momentum=config.momentum,
        weight_decay=config.weight_decay, warmup_epochs=config.warmup_epochs, mosaic=config.mosaic,
        fliplr=config.fliplr, amp=config.amp, single_cls=True, plots=False, verbose=False, val=True,
    )
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        best = run_dir / "weights" / "last.pt"
    history = results_history(run_dir / "results.csv")
    write_metrics_csv(history, run_dir / "metrics.csv")
    plot_loss_curve(history, run_dir / "loss_curve.png", f"YOLO ({config.model}), fold {fold}")

    detections = predict_yolo(ultralytics.YOLO(str(best)), held_out["predict_path"], image_size=config.predict_size,
                              score_threshold=config.score_threshold, nms_threshold=config.nms_threshold,
                              max_detections=config.detections_per_image, device=device,
                              progress=not args.no_progress)
    return best, detection_rows(held_out["image_id"], held_out["study_id"], MODEL_NAME, fold, detections)


def register_weights(best_weights: dict[int, Path], config: YoloConfig, weights_dir: Path) -> None:
    """ultralytics' own ``.pt`` files (what ``YOLO(path)`` loads) copied to ``yolo/fold<k>.pt``."""
    files = {}
    for fold, source in sorted(best_weights.items()):
        relative = Path(MODEL_NAME) / f"fold{fold}.pt"
        copy_atomic(source, weights_dir / relative)
        files[fold] = str(relative)
    path = register_model(weights_dir, MODEL_NAME, "yolo", files, config.predict_size, asdict(config))
    log.info("registered %d fold(s) of %r in %s", len(files), MODEL_NAME, path)


if __name__ == "__main__":
    sys.exit(main())
