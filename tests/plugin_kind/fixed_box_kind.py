"""A model kind from outside the project, for tests/test_kind_plugin.py: a "detector" that learns one box
(the mean of the training folds' boxes, scored by the share of training images that have one) and
predicts it on every image; its member is fixed_box_member.py. Registered through entry points only (the
dist-info folder beside it), so the test proves a new kind needs no edit of any project file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from fixed_box_member import FixedBoxMember, fold_weights

from utils.core.config import Folds, ImageSize
from utils.data.predictions import detection_rows
from utils.ensemble.manifest import register_model
from utils.kinds.base import FoldResult, ModelKind, split_fold
from utils.scoring.detection import read_detection_table, write_detector_report


@dataclass
class FixedBoxConfig:
    """The ``fixed_box`` section."""

    image_size: ImageSize = 32  # a declared range, as every number of a config has
    folds: Folds | None = None
    device: str = "cpu"


class FixedBoxKind(ModelKind):
    name = "fixed_box"
    config_class = FixedBoxConfig
    member_class = FixedBoxMember
    title = "fixed box"
    resumable = False

    def load_table(self, meta_csv, config):
        return read_detection_table(meta_csv, config.image_size, config.image_size)

    def train_fold(self, table, fold, config, options) -> FoldResult:
        train, _, held_out = split_fold(table, fold, options.prepared)
        boxes = [b for b in train["boxes_norm"] if len(b)]
        mean = np.concatenate(boxes).mean(axis=0) if boxes else np.array([0.25, 0.25, 0.75, 0.75])
        weights = torch.tensor([*mean, len(boxes) / max(len(train), 1)], dtype=torch.float32)
        best = options.out / f"fold{fold}" / "best.pt"
        best.parent.mkdir(parents=True, exist_ok=True)
        torch.save(weights, best)
        found = [(weights[None, :4].numpy(), weights[4:5].numpy())] * len(held_out)
        return FoldResult(best, detection_rows(held_out["image_id"], held_out["study_id"], self.name, fold,
                                               found))

    def write_report(self, oof, table, out) -> dict:
        return write_detector_report(oof, table, out)

    def register(self, best, config, weights_dir: Path) -> Path:
        files = {}
        for fold, path in sorted(best.items()):
            relative = Path(self.name) / f"fold{fold}.pt"
            (weights_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            torch.save(fold_weights(path), weights_dir / relative)
            files[int(fold)] = str(relative)
        return register_model(weights_dir, self.name, files, config.image_size,
                              asdict(config))

    def untrained_weights(self, config, path) -> None:
        torch.save(torch.tensor([0.25, 0.25, 0.75, 0.75, 0.5]), path)


KIND = FixedBoxKind()
