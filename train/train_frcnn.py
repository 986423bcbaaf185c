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
weights as model "faster_rcnn" in --weights-dir/manifest.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from train.cli import add_run_arguments, configure_logging
from train.presets import build_transform
from utils.config import load_section, parse_overrides, save_config
from utils.datasets import DetectionDataset
from utils.detection import detector_scores, read_detection_table, write_detector_report
from utils.engine import (
    TrainConfig,
    collate_detection,
    fit,
    init_distributed,
    load_checkpoint,
    predict,
    resolve_device,
    resolve_precision,
)
from utils.frcnn import FasterRCNNDetector, detector_from_config, load_detector_state, unpad_detections
from utils.manifest import register_fold_checkpoints
from utils.models import PRETRAINED_NONE
from utils.predictions import detection_rows
from utils.prepare import fold_split, prepare_rsna, select_folds

log = logging.getLogger("train_frcnn")
SECTION = "frcnn"
MODEL_NAME = "faster_rcnn"


@dataclass
class FrcnnConfig(TrainConfig):
    arch: str = "resnext50_32x4d"
    backbone: str = PRETRAINED_NONE
    init_from: str | None = None
    freeze_bn: bool = True
    trainable_layers: int = 3
    image_size: int = 512
    predict_size: int = 1024
    val_batch_size: int = 6
    score_threshold: float = 0.001
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    proposals: int = 1000
    roi_samples: int = 512
    fpn_channels: int = 256
    box_head_size: int = 1024
    negative_fraction: float = 1.0
    pretrain_epochs: int = 10
    folds: list[int] | None = None
    monitor: Literal["opacity_ap", "loss"] = "opacity_ap"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="meta.csv written by train/prepare.py")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--pretrain-rsna", type=Path, default=None, metavar="RSNA_DIR",
                       help="train on this RSNA Pneumonia folder first and start every fold from it")
    start.add_argument("--init-from", type=str, default=None, metavar="CHECKPOINT",
                       help="start every fold from this detector checkpoint (overrides init_from)")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where to export the fold weights and register them in manifest.json")
    add_run_arguments(parser, SECTION, "runs/frcnn")
    return parser


def build_detector(config: FrcnnConfig) -> FasterRCNNDetector:
    """The detector of ``config``: the trunk from ``backbone``, or everything from ``init_from``."""
    trunk = PRETRAINED_NONE if config.init_from else config.backbone
    if config.freeze_bn and trunk in (None, "", PRETRAINED_NONE) and not config.init_from:
        log.warning("freeze_bn with a random trunk keeps untrained normalisation; set freeze_bn=false")
    model = detector_from_config(asdict(config), trunk, config.image_size)
    if config.init_from:
        load_detector_state(model, load_checkpoint(config.init_from)["model"], config.init_from)
    return model


def load_table(meta_csv: Path, config) -> pd.DataFrame:
    try:
        return read_detection_table(meta_csv, config.image_size, config.predict_size)
    except (OSError, ValueError) as err:
        raise SystemExit(str(err)) from err


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    config = load_section(args.config, SECTION, FrcnnConfig, parse_overrides(args.overrides))
    if args.init_from:
        config = dataclasses.replace(config, init_from=args.init_from)
    info = init_distributed(config.device)
    if args.pretrain_rsna is not None:
        config = dataclasses.replace(config, init_from=str(pretrain_on_rsna(args.pretrain_rsna, config, args)))
    if info.is_main:  # after pre-training, so config.yaml names the checkpoint the folds start from
        save_config(config, args.out / "config.yaml", SECTION)

    table = load_table(args.prepared, config)
    try:
        folds = select_folds(table, config.folds, args.prepared)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if info.is_main:
        log.info("%d images (%d used for training, %d with boxes); training folds %s", len(table),
                 int(table["used"].sum()), int((table["n_boxes"].astype(int) > 0).sum()), folds)
    oof, best_checkpoints = [], {}
    for fold in folds:
        best_checkpoints[fold], predictions = train_fold(table, fold, config, args.out, args)
        oof.append(predictions)
    if info.is_main:
        write_detector_report(pd.concat(oof, ignore_index=True), table[table["fold"].isin(folds)], args.out)
        if args.weights_dir is not None:
            register_weights(best_checkpoints, config, args.weights_dir)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def pretrain_on_rsna(rsna_dir: Path, config: FrcnnConfig, args) -> Path:
    """Prepare the RSNA folder (cached under --out/rsna/prepared), train ``pretrain_epochs`` with fold 0
    held out, and return the best checkpoint."""
    out = args.out / "rsna"
    info = init_distributed(config.device)
    if info.is_main:
        prepare_rsna(rsna_dir, out / "prepared", sizes=tuple(sorted({config.image_size, config.predict_size})),
                     workers=max(1, config.workers), progress=not args.no_progress)
    if info.enabled:
        torch.distributed.barrier()
    pre_config = dataclasses.replace(config, epochs=config.pretrain_epochs)
    table = load_table(out / "prepared" / "meta.csv", pre_config)
    best, predictions = train_fold(table, 0, pre_config, out, args, title="RSNA pre-training")
    if info.is_main:
        write_detector_report(predictions, table[table["fold"] == 0], out)
    return best


def keep_negatives(train: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The training images with boxes and a ``fraction`` of those without (drawn with ``seed``): on a
    CPU budget the box-free images cost as much as the others but teach the detector less."""
    if not 0.0 <= fraction <= 1.0:
        raise SystemExit(f"negative_fraction must be in [0, 1], got {fraction}")
    negative = train["n_boxes"].astype(int) == 0
    if fraction >= 1.0 or not negative.any():
        return train
    kept = train[negative].sample(frac=fraction, random_state=seed)
    log.info("training on %d images with boxes and %d of %d without (negative_fraction=%g)",
             int((~negative).sum()), len(kept), int(negative.sum()), fraction)
    return pd.concat([train[~negative], kept]).sort_index().reset_index(drop=True)


def _dataset(frame: pd.DataFrame, preset: str, size: int, config: FrcnnConfig, column: str = "image_path"):
    return DetectionDataset(frame[column], frame["boxes_norm"], build_transform(preset, size), seed=config.seed)


def train_fold(table: pd.DataFrame, fold: int, config: FrcnnConfig, out: Path, args,
               title: str = "Faster R-CNN") -> tuple[Path, pd.DataFrame | None]:
    """Train on the used images of the other folds (negatives included, with empty targets), keep
    the best epoch on this fold's used images, then predict every image of this fold at
    ``predict_size``."""
    try:
        train, val, held_out = fold_split(table, fold, args.prepared)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    train = keep_negatives(train, config.negative_fraction, config.seed)

    def evaluate(indices: torch.Tensor, outputs: dict) -> dict:
        rows = val.iloc[indices.numpy()]
        predictions = detection_rows(rows["image_id"], rows["study_id"], MODEL_NAME, fold, unpad_detections(outputs))
        return {"opacity_ap": detector_scores(predictions, val)["opacity_ap"]}

    model = build_detector(config)
    monitor, mode = ("val_opacity_ap", "max") if config.monitor == "opacity_ap" else ("val_loss", "min")
    result = fit(model, _dataset(train, "frcnn_train", config.image_size, config),
                 _dataset(val, "detector_eval", config.image_size, config), config, out / f"fold{fold}",
                 evaluate=evaluate, monitor=monitor, mode=mode, resume=args.resume, collate_fn=collate_detection,
                 val_batch_size=config.val_batch_size, progress=not args.no_progress, title=f"{title}, fold {fold}")
    if not init_distributed(config.device).is_main:
        return result.best_checkpoint, None

    device = resolve_device(config.device)
    model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    model.set_image_size(config.predict_size)
    held_out_set = _dataset(held_out, "detector_eval", config.predict_size, config, "predict_path")
    _, indices, outputs = predict(model, held_out_set, batch_size=config.val_batch_size, workers=config.workers,
                                  device=device, precision=resolve_precision(config.amp, device),
                                  collate_fn=collate_detection, progress=not args.no_progress,
                                  desc=f"fold {fold} out-of-fold")
    rows = held_out.iloc[indices.numpy()]
    return result.best_checkpoint, detection_rows(rows["image_id"], rows["study_id"], MODEL_NAME, fold,
                                                  unpad_detections(outputs))


def register_weights(best_checkpoints: dict[int, Path], config, weights_dir: Path) -> None:
    path = register_fold_checkpoints(weights_dir, MODEL_NAME, "faster_rcnn", best_checkpoints,
                                     config.predict_size, asdict(config))
    log.info("registered %d fold(s) of %r in %s", len(best_checkpoints), MODEL_NAME, path)


if __name__ == "__main__":
    sys.exit(main())
