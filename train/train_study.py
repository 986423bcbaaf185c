"""Train the study-level classifier (negative / typical / indeterminate / atypical, plus the image-level
"none") on the prepared SIIM images, one model per fold, trunk initialised from the NIH backbone.

    python train/train_study.py --prepared runs/prepared/meta.csv --out runs/study
        [--config train/configs/full.yaml] [--set backbone=runs/backbone/best.pt folds=[0,1]]
        [--weights-dir runs/weights] [--resume]

Writes to --out: config.yaml, fold<k>/ (engine run folder: last.pt, best.pt, metrics.csv,
loss_curve.png), oof_predictions.csv (every image of each trained fold, shared prediction schema),
oof_scores.json / oof_scores.txt (study mAP, none AP, per-class AP with the competition metric).
The held-out fold is predicted through the config's ``tta_views`` (:mod:`utils.tta`), as at test time.
Registers each fold's best weights as model "study" in --weights-dir/manifest.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from train.cli import add_run_arguments, configure_logging
from train.presets import build_transform
from utils.classification import study_accuracy, study_classifier_scores
from utils.config import load_section, parse_overrides, save_config
from utils.datasets import StudyDataset
from utils.detection import read_detection_table
from utils.engine import (
    TrainConfig,
    fit,
    init_distributed,
    load_checkpoint,
    predict,
    resolve_device,
    resolve_precision,
)
from utils.manifest import register_fold_checkpoints
from utils.metric import format_score_table
from utils.models import StudyClassifier
from utils.predictions import classifier_rows, write_predictions
from utils.prepare import fold_split, select_folds
from utils.tta import FLIP, StudyTTA, check_views

log = logging.getLogger("train_study")
SECTION = "study"
MODEL_NAME = "study"


@dataclass
class StudyConfig(TrainConfig):
    arch: str = "resnext50_32x4d"
    backbone: str = "none"
    image_size: int = 512
    folds: list[int] | None = None
    none_weight: float = 1.0
    seg_weight: float = 0.0
    decoder_width: int = 64
    label_smoothing: float = 0.0
    tta_views: list[str] = field(default_factory=lambda: list(FLIP))
    monitor: Literal["study_map", "loss"] = "study_map"

    def __post_init__(self):
        check_views(self.tta_views)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="meta.csv written by train/prepare.py")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="where to export the fold weights and register them in manifest.json")
    add_run_arguments(parser, SECTION, "runs/study")
    return parser


def load_table(meta_csv: Path, image_size: int, with_boxes: bool = False) -> pd.DataFrame:
    """meta.csv (see :func:`utils.prepare.read_meta`) with the targets per image: the study class and
    "none"; ``with_boxes`` adds the boxes (XYXY_NORM, drawn into the auxiliary head's mask by the
    dataset) and ``mask_valid``: 0 for an un-annotated duplicate, whose boxes are unknown."""
    try:
        table = read_detection_table(meta_csv, image_size, image_size)
    except (OSError, ValueError) as err:
        raise SystemExit(str(err)) from err
    table["targets"] = [{"study": int(label), "none": float(n == 0)}
                        for label, n in zip(table["study_label"], table["n_boxes"].astype(int))]
    if with_boxes:
        for target, boxes, used in zip(table["targets"], table["boxes_norm"], table["used"]):
            target.update(boxes=boxes, mask_valid=float(used))
    return table


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    config = load_section(args.config, SECTION, StudyConfig, parse_overrides(args.overrides))
    info = init_distributed(config.device)
    table = load_table(args.prepared, config.image_size, with_boxes=config.seg_weight > 0)
    try:
        folds = select_folds(table, config.folds, args.prepared)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if info.is_main:
        save_config(config, args.out / "config.yaml", SECTION)
        log.info("%d images (%d used for training); training folds %s", len(table), int(table["used"].sum()), folds)

    oof, best_checkpoints = [], {}
    for fold in folds:
        best_checkpoints[fold], predictions = train_fold(table, fold, config, args)
        oof.append(predictions)
    if info.is_main:
        write_oof_report(pd.concat(oof, ignore_index=True), table, args.out)
        if args.weights_dir is not None:
            register_weights(best_checkpoints, config, args.weights_dir)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _dataset(frame: pd.DataFrame, preset: str, config: StudyConfig) -> StudyDataset:
    return StudyDataset(frame["image_path"], frame["targets"], build_transform(preset, config.image_size),
                        seed=config.seed)


def predict_held_out(model: StudyClassifier, held_out: pd.DataFrame, fold: int, config: StudyConfig,
                     views=None, progress: bool = True) -> pd.DataFrame:
    """Prediction rows of every image of ``held_out`` through ``views`` (default: the config's
    ``tta_views``), probabilities averaged over the views."""
    device = resolve_device(config.device)
    _, indices, outputs = predict(StudyTTA(model, views or config.tta_views), _dataset(held_out, "study_eval", config),
                                  batch_size=config.batch_size, workers=config.workers, device=device,
                                  precision=resolve_precision(config.amp, device), progress=progress,
                                  desc=f"fold {fold} out-of-fold")
    rows = held_out.iloc[indices.numpy()]
    study_probs, none_probs = StudyClassifier.probabilities(outputs)
    return classifier_rows(rows["image_id"], rows["study_id"], MODEL_NAME, fold, study_probs, none_probs)


def train_fold(table: pd.DataFrame, fold: int, config: StudyConfig, args) -> tuple[Path, pd.DataFrame | None]:
    """Train on the used images of the other folds, keep the best epoch on this fold's used images,
    then predict every image of this fold (un-annotated duplicates too: a study's probability is the
    mean over all its images, as at test time)."""
    try:
        train, val, held_out = fold_split(table, fold, args.prepared)
    except ValueError as err:
        raise SystemExit(str(err)) from err

    def evaluate(indices: torch.Tensor, outputs: dict) -> dict:
        rows = val.iloc[indices.numpy()]
        study_probs, none_probs = StudyClassifier.probabilities(outputs)
        predictions = classifier_rows(rows["image_id"], rows["study_id"], MODEL_NAME, fold, study_probs, none_probs)
        scores = study_classifier_scores(predictions, val)
        return {"study_map": scores["study_map"], "none_ap": scores["none_ap"],
                "study_accuracy": study_accuracy(predictions, val)}

    model = StudyClassifier.from_config(asdict(config), config.backbone)
    monitor, mode = ("val_study_map", "max") if config.monitor == "study_map" else ("val_loss", "min")
    run_dir = args.out / f"fold{fold}"
    result = fit(model, _dataset(train, "study_train", config), _dataset(val, "study_eval", config), config, run_dir,
                 evaluate=evaluate, monitor=monitor, mode=mode, resume=args.resume, progress=not args.no_progress,
                 title=f"study classifier, fold {fold}")
    if not init_distributed(config.device).is_main:
        return result.best_checkpoint, None

    model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    return result.best_checkpoint, predict_held_out(model, held_out, fold, config, progress=not args.no_progress)


def write_oof_report(oof: pd.DataFrame, table: pd.DataFrame, out: Path) -> dict:
    """oof_predictions.csv and the competition-metric scores of those predictions (json + table)."""
    write_predictions(oof, out / "oof_predictions.csv")
    scores = study_classifier_scores(oof, table)
    scores["study_accuracy"] = study_accuracy(oof, table)
    scores["per_fold"] = {int(fold): study_classifier_scores(part, table)["study_map"]
                          for fold, part in oof.groupby("fold")}
    (out / "oof_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    text = format_score_table(scores) + (f"\nnone AP {scores['none_ap']:.4f}" if scores["none_ap"] is not None else "")
    text += f"\nstudy accuracy {scores['study_accuracy']:.4f}\n"
    (out / "oof_scores.txt").write_text(text)
    log.info("out-of-fold scores (%s):\n%s", out / "oof_scores.json", text)
    return scores


def register_weights(best_checkpoints: dict[int, Path], config, weights_dir: Path) -> None:
    path = register_fold_checkpoints(weights_dir, MODEL_NAME, "study_classifier", best_checkpoints,
                                     config.image_size, asdict(config))
    log.info("registered %d fold(s) of %r in %s", len(best_checkpoints), MODEL_NAME, path)


if __name__ == "__main__":
    sys.exit(main())
