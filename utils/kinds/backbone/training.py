"""The ``backbone`` kind: fine-tune a trunk on NIH ChestX-ray14's 14 findings (best epoch by mean
validation AUC), then score its best checkpoint on the test split."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from utils.core.config import save_config
from utils.core.files import write_json_atomic, write_text_atomic
from utils.core.runtime import resolve_device, resolve_precision
from utils.data.datasets import ImageDataset
from utils.data.nih import NIH_FINDINGS, assign_nih_splits, load_nih_entries
from utils.data.presets import build_transform
from utils.kinds.backbone.config import BackboneConfig
from utils.kinds.backbone.network import MultiLabelClassifier
from utils.kinds.base import PretrainingKind, StagePlan
from utils.nets.models import check_trunk_file
from utils.scoring.classification import format_multilabel_table, multilabel_report
from utils.training.checkpoints import load_checkpoint
from utils.training.distributed import init_distributed
from utils.training.loop import fit, predict, seed_initialisation

log = logging.getLogger(__name__)


class BackboneKind(PretrainingKind):
    name = "backbone"
    config_class = BackboneConfig
    title = "NIH ChestX-ray14 backbone"
    script = "train/train_backbone.py"

    def has_input(self, plan: StagePlan) -> bool:
        return plan.nih_dir is not None

    def stage_arguments(self, plan: StagePlan) -> list[str]:
        return ["--data-dir", str(plan.nih_dir)]

    def check_files(self, config: BackboneConfig, plan: StagePlan) -> None:
        if self.has_input(plan):
            check_trunk_file("pretrained", config.arch, config.pretrained)


KIND = BackboneKind()


def _nan_if_none(value):
    return math.nan if value is None else value


def train_backbone(config: BackboneConfig, data_dir: Path, split_dir: Path | None, out: Path, resume: bool = False,
                   progress: bool = True) -> Path:
    """Train on the NIH split's train part, keep the best epoch on its val part, write the test part's
    report (``eval_test.json``/``.txt``; the val part's when there is no test part). Returns the best
    checkpoint (``OUT/best.pt``)."""
    info = init_distributed(config.device)
    entries = load_nih_entries(data_dir)
    entries["split"] = assign_nih_splits(entries, split_dir or data_dir, config.val_fraction, seed=config.seed)
    parts = {name: entries[entries["split"] == name].reset_index(drop=True) for name in ("train", "val", "test")}
    if info.is_main:
        log.info("NIH images: %s", ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
        save_config(config, out / "config.yaml", KIND.name)
    if parts["val"].empty:
        raise SystemExit(f"{data_dir}: too few patients for a validation split")

    def dataset(part: str, preset: str) -> ImageDataset:
        frame = parts[part]
        return ImageDataset(frame["path"], frame["targets"], build_transform(preset, config.image_size, config.resize),
                            seed=config.seed)

    val_targets = np.stack(parts["val"]["targets"])

    def evaluate(indices: torch.Tensor, outputs: dict) -> dict:
        report = multilabel_report(val_targets[indices.numpy()], outputs["logits"].sigmoid().numpy(), NIH_FINDINGS,
                                   config.threshold)
        return {k: _nan_if_none(report[k]) for k in ("mean_auc", "mean_f1", "mean_accuracy")}

    seed_initialisation(config.seed)
    model = MultiLabelClassifier(len(NIH_FINDINGS), config.arch, config.pretrained)
    result = fit(model, dataset("train", "nih_train"), dataset("val", "nih_eval"), config, out,
                 evaluate=evaluate, monitor="val_mean_auc", mode="max", resume=resume,
                 progress=progress, title=f"NIH ChestX-ray14 {config.arch}")
    if info.is_main:
        split = "test" if len(parts["test"]) else "val"
        evaluate_split(result.best_checkpoint, parts[split], split, config, out, progress)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result.best_checkpoint


def evaluate_split(checkpoint_path: Path, frame: pd.DataFrame, split: str, config: BackboneConfig, out: Path,
                   progress: bool) -> dict:
    """Per-finding AUC, F1 and accuracy of the checkpoint on ``frame``: eval_<split>.json and .txt."""
    device = resolve_device(config.device)
    model = MultiLabelClassifier(len(NIH_FINDINGS), config.arch, None)
    model.load_state_dict(load_checkpoint(checkpoint_path)["model"])
    data = ImageDataset(frame["path"], frame["targets"], build_transform("nih_eval", config.image_size, config.resize))
    _, indices, outputs = predict(model, data, batch_size=config.batch_size, workers=config.workers, device=device,
                                  precision=resolve_precision(config.amp, device), progress=progress,
                                  desc=f"evaluate {split}")
    targets = np.stack(frame["targets"])[indices.numpy()]
    report = multilabel_report(targets, outputs["logits"].sigmoid().numpy(), NIH_FINDINGS, config.threshold)
    report.update({"split": split, "checkpoint": str(checkpoint_path)})
    write_json_atomic(out / f"eval_{split}.json", report)
    table = format_multilabel_table(report)
    write_text_atomic(out / f"eval_{split}.txt", table + "\n")
    log.info("%s split of %s:\n%s", split, checkpoint_path, table)
    return report
