"""Faster R-CNN's inference member: per image, one set of boxes per fold and flip."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field

from utils.config import BatchSize, BoxCount, Epochs, Folds, Fraction, ImageSize
from utils.frcnn import detector_from_config, load_detector_state, unpad_detections
from utils.fusion import MemberPrediction
from utils.loop_config import TrainConfig
from utils.members.base import Detections, Member, model_input, with_flipped
from utils.models import NORMALIZATION_AUTO, PRETRAINED_NONE, check_pretrained_source, resolve_normalization
from utils.runtime import Precision


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


class FasterRCNNMember(Member):
    kind = "frcnn"
    config_class = FrcnnConfig
    legacy_defaults = {"normalization": "imagenet"}  # the only normalisation before the key existed

    def __init__(self, name, spec, weights_dir, device: torch.device):
        super().__init__(name, spec, weights_dir, device)
        self.models = [self.fold_network(
            lambda: detector_from_config(asdict(self.config), PRETRAINED_NONE, self.input_size), path,
            load_detector_state) for path in self.files]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tta: bool, precision: Precision,
                with_opacity_map: bool = False) -> MemberPrediction:
        """uint8 ``(B, S, S)`` on the device -> per image, one ``(boxes, scores)`` per fold and flip."""
        batch = model_input(images)
        inputs = list(batch) + (list(batch.flip(-1)) if tta else [])
        per_input: list[Detections] = [[] for _ in inputs]
        for model in self.models:
            with torch.autocast(batch.device.type, dtype=precision.dtype, enabled=precision.enabled):
                outputs = model(inputs)
            for k, found in enumerate(unpad_detections({key: v.cpu() for key, v in outputs.items()})):
                per_input[k].append(found)
        n = len(images)
        return MemberPrediction(boxes=with_flipped(per_input[:n], per_input[n:]) if tta else per_input)
