"""The ``backbone`` section: the kind's config schema, each key with its default and
documentation (all of them: docs/reference.md, "Settings")."""

from __future__ import annotations

from dataclasses import dataclass

from utils.core.config import ImageSize, OpenFraction
from utils.core.loop_config import TrainConfig
from utils.nets.models import check_pretrained_source


@dataclass
class BackboneConfig(TrainConfig):
    """The ``backbone`` section: the trunk fine-tuned on NIH ChestX-ray14 (train/train_backbone.py)."""

    arch: str = "resnext50_32x4d"
    """resnet18 | resnet34 | resnet50 | resnext50_32x4d | resnext101_32x8d."""
    pretrained: str = "imagenet"
    """Local torchvision .pth file | imagenet (download) | none (random) | imagenet-lite (with arch
    timm:tf_efficientnet_lite0|1|2: offline, from the registry wheels)."""
    image_size: ImageSize = 224
    """Centre crop side in pixels."""
    resize: ImageSize = 256
    """Shorter side before the crop."""
    val_fraction: OpenFraction = 0.1
    """Patients of train_val held out for validation."""
    threshold: OpenFraction = 0.5
    """Probability cut for F1 and accuracy."""

    def __post_init__(self):
        super().__post_init__()
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size}): it is cropped")
        check_pretrained_source(self.arch, self.pretrained)
