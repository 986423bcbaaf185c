"""The ``frcnn`` section: the kind's config schema (train/configs/*.yaml document every key); read by
training and, from the manifest's copy, by its member."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from utils.core.config import BatchSize, BoxCount, Epochs, Folds, Fraction, ImageSize
from utils.core.loop_config import TrainConfig
from utils.nets.models import NORMALIZATION_AUTO, PRETRAINED_NONE, check_pretrained_source, resolve_normalization


@dataclass
class FrcnnConfig(TrainConfig):
    """The ``frcnn`` section (train/configs/*.yaml document every key)."""

    arch: str = "resnext50_32x4d"
    backbone: str = PRETRAINED_NONE
    normalization: str = NORMALIZATION_AUTO
    init_from: str | None = None
    freeze_bn: bool = True
    trainable_layers: Annotated[int, Field(ge=0, le=5)] = 3
    image_size: ImageSize = 512
    predict_size: ImageSize = 1024
    val_batch_size: BatchSize = 6
    score_threshold: Fraction = 0.001
    nms_threshold: Fraction = 0.5
    detections_per_image: BoxCount = 100
    # Upper bounds far above any useful value, below what would exhaust memory building the network.
    proposals: Annotated[int, Field(ge=1, le=10_000)] = 1000
    roi_samples: Annotated[int, Field(ge=1, le=4096)] = 512
    fpn_channels: Annotated[int, Field(ge=1, le=1024)] = 256
    box_head_size: Annotated[int, Field(ge=1, le=8192)] = 1024
    negative_fraction: Fraction = 1.0
    # An RSNA Pneumonia folder (stage_2_train_labels.csv, stage_2_train_images/): trained on first for
    # pretrain_epochs (fold 0 held out), and every fold starts from that run's best weights (init_from).
    pretrain_rsna: str | None = None
    pretrain_epochs: Epochs = 10
    folds: Folds | None = None
    # last: the fixed schedule's last epoch (the held-out fold is only watched); opacity_ap/loss choose
    # the best epoch on the held-out fold it is then scored on (an optimistic out-of-fold figure).
    monitor: Literal["last", "opacity_ap", "loss"] = "last"

    def __post_init__(self):
        super().__post_init__()
        check_pretrained_source(self.arch, self.backbone)
        # Resolved here, so the manifest's copy of this config names the normalisation the weights need.
        self.normalization = resolve_normalization(self.normalization, self.arch)
