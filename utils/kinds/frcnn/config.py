"""The ``frcnn`` section: the kind's config schema, each key with its default and
documentation (all of them: docs/reference.md, "Settings"); read by training and, from the
manifest's copy, by its member."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from utils.core.config import BatchSize, BoxCount, Epochs, Folds, Fraction, ImageSize
from utils.core.loop_config import TrainConfig
from utils.nets.models import NORMALIZATION_AUTO, PRETRAINED_NONE, check_pretrained_source, resolve_normalization


@dataclass
class FrcnnConfig(TrainConfig):
    """The ``frcnn`` section: the Faster R-CNN opacity detector, per fold."""

    arch: str = "resnext50_32x4d"
    """The trunk's architecture (the NIH checkpoint's when it starts from one): a torchvision name or timm:<name>."""
    backbone: str = PRETRAINED_NONE
    """Trunk weights: NIH checkpoint | torchvision .pth | imagenet | none | imagenet-lite (arch
    timm:tf_efficientnet_lite0|1|2; the ImageNet option without NIH, offline)."""
    normalization: str = NORMALIZATION_AUTO
    """Input normalisation inside the model: auto (lite for the Lite trunks, else imagenet) | imagenet | lite."""
    init_from: str | None = None
    """Whole-detector checkpoint to start from (RSNA pre-training); replaces backbone."""
    freeze_bn: bool = True
    """BatchNorm frozen at the trunk's statistics (false for a random trunk)."""
    trainable_layers: Annotated[int, Field(ge=0, le=5)] = 3
    """Trunk stages trained, from the top (0-5; 5 trains all)."""
    image_size: ImageSize = 512
    """Square training input side."""
    predict_size: ImageSize = 1024
    """Square input side for predictions."""
    val_batch_size: BatchSize = 6
    """Images per validation and prediction step."""
    score_threshold: Fraction = 0.001
    """Lowest detection score kept (low is good for mAP)."""
    nms_threshold: Fraction = 0.5
    """IoU above which the lower-scored box is suppressed."""
    detections_per_image: BoxCount = 100
    """Most boxes kept per image."""
    # Upper bounds far above any useful value, below what would exhaust memory building the network.
    proposals: Annotated[int, Field(ge=1, le=10_000)] = 1000
    """Region proposals per image kept for the box head (twice as many in training)."""
    roi_samples: Annotated[int, Field(ge=1, le=4096)] = 512
    """Proposals sampled per training image for the box head's loss."""
    fpn_channels: Annotated[int, Field(ge=1, le=1024)] = 256
    """Channels of the feature pyramid."""
    box_head_size: Annotated[int, Field(ge=1, le=8192)] = 1024
    """Width of the box head's two fully connected layers."""
    negative_fraction: Fraction = 1.0
    """Share of the training images without a box kept each run (drawn with seed): on a CPU budget they cost
    as much as the others and teach the detector less."""
    pretrain_rsna: str | None = None
    """An RSNA Pneumonia folder (stage_2_train_labels.csv, stage_2_train_images/) trained on first for
    pretrain_epochs (fold 0 held out); every fold starts from that run's best weights (init_from). train_all
    sets it from --rsna-dir."""
    pretrain_epochs: Epochs = 10
    """Epochs on RSNA Pneumonia with pretrain_rsna."""
    folds: Folds | None = None
    """Folds to train (null: every fold in meta.csv)."""
    monitor: Literal["last", "opacity_ap", "loss"] = "last"
    """last (the schedule's last epoch: the scored fold never chooses) | opacity_ap | loss (the best epoch on the
    fold then scored: optimistic)."""

    def __post_init__(self):
        super().__post_init__()
        check_pretrained_source(self.arch, self.backbone)
        # Resolved here, so the manifest's copy of this config names the normalisation the weights need.
        self.normalization = resolve_normalization(self.normalization, self.arch)
