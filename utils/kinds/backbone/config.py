"""The ``backbone`` section: the kind's config schema (train/configs/*.yaml document every key)."""

from __future__ import annotations

from dataclasses import dataclass

from utils.core.config import ImageSize, OpenFraction
from utils.core.loop_config import TrainConfig
from utils.nets.models import check_pretrained_source


@dataclass
class BackboneConfig(TrainConfig):
    """The ``backbone`` section (train/train_backbone.py; train/configs/*.yaml document every key)."""

    arch: str = "resnext50_32x4d"
    pretrained: str = "imagenet"
    image_size: ImageSize = 224
    resize: ImageSize = 256
    val_fraction: OpenFraction = 0.1
    threshold: OpenFraction = 0.5

    def __post_init__(self):
        super().__post_init__()
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must be at least image_size ({self.image_size}): it is cropped")
        check_pretrained_source(self.arch, self.pretrained)
