"""Fine-tune a torchvision ResNeXt on NIH ChestX-ray14 (14 findings): the trunk every other model starts from.

    python train/train_backbone.py --data-dir NIH_DIR --out runs/backbone [--config train/configs/full.yaml]
        [--pretrained PATH|imagenet|none] [--set KEY=VALUE ...] [--resume]
    torchrun --nproc_per_node 4 train/train_backbone.py ...     # DistributedDataParallel

Writes to --out: config.yaml (resolved), last.pt / best.pt (best mean validation AUC), metrics.csv,
loss_curve.png, and eval_test.json / eval_test.txt (per-finding AUC, F1, accuracy on the test split).
Other stages take the trunk from best.pt (``--set backbone=runs/backbone/best.pt``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

from utils.core.config import load_section, parse_overrides, save_config
from utils.core.files import write_json_atomic, write_text_atomic
from utils.core.runtime import resolve_device, resolve_precision
from utils.data.datasets import ImageDataset
from utils.data.nih import NIH_FINDINGS, BackboneConfig, assign_nih_splits, load_nih_entries
from utils.data.presets import build_transform
from utils.nets.models import MultiLabelClassifier
from utils.scoring.classification import format_multilabel_table, multilabel_report
from utils.training.checkpoints import load_checkpoint
from utils.training.cli import add_run_arguments, configure_logging
from utils.training.distributed import init_distributed
from utils.training.loop import fit, predict

log = logging.getLogger("train_backbone")
SECTION = "backbone"




def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="folder with Data_Entry_2017.csv and images*/ (and the official split lists)")
    parser.add_argument("--split-dir", type=Path, default=None,
                        help="folder with train_val_list.txt and test_list.txt (default: --data-dir)")
    parser.add_argument("--pretrained", default=None,
                        help="initial weights: a local torchvision .pth file, 'imagenet' (download) or 'none'")
    add_run_arguments(parser, SECTION, "runs/backbone")
    return parser


def load_config(args) -> BackboneConfig:
    overrides = parse_overrides(args.overrides)
    if args.pretrained is not None:
        overrides["pretrained"] = args.pretrained
    return load_section(args.config, SECTION, BackboneConfig, overrides)


def _nan_if_none(value):
    return math.nan if value is None else value


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    config = load_config(args)
    info = init_distributed(config.device)

    entries = load_nih_entries(args.data_dir)
    entries["split"] = assign_nih_splits(entries, args.split_dir or args.data_dir, config.val_fraction,
                                         seed=config.seed)
    parts = {name: entries[entries["split"] == name].reset_index(drop=True) for name in ("train", "val", "test")}
    if info.is_main:
        log.info("NIH images: %s", ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
        save_config(config, args.out / "config.yaml", SECTION)
    if parts["val"].empty:
        raise SystemExit(f"{args.data_dir}: too few patients for a validation split")

    def dataset(part: str, preset: str) -> ImageDataset:
        frame = parts[part]
        return ImageDataset(frame["path"], frame["targets"], build_transform(preset, config.image_size, config.resize),
                            seed=config.seed)

    val_targets = np.stack(parts["val"]["targets"])

    def evaluate(indices: torch.Tensor, outputs: dict) -> dict:
        report = multilabel_report(val_targets[indices.numpy()], outputs["logits"].sigmoid().numpy(), NIH_FINDINGS,
                                   config.threshold)
        return {k: _nan_if_none(report[k]) for k in ("mean_auc", "mean_f1", "mean_accuracy")}

    model = MultiLabelClassifier(len(NIH_FINDINGS), config.arch, config.pretrained)
    result = fit(model, dataset("train", "nih_train"), dataset("val", "nih_eval"), config, args.out,
                 evaluate=evaluate, monitor="val_mean_auc", mode="max", resume=args.resume,
                 progress=not args.no_progress, title=f"NIH ChestX-ray14 {config.arch}")
    if info.is_main:
        evaluate_split(result.best_checkpoint, parts["test"] if len(parts["test"]) else parts["val"],
                       "test" if len(parts["test"]) else "val", config, args.out, not args.no_progress)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def evaluate_split(checkpoint_path: Path, frame, split: str, config: BackboneConfig, out: Path, progress: bool) -> dict:
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


if __name__ == "__main__":
    sys.exit(main())
