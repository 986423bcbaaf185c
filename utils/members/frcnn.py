"""Faster R-CNN's inference member: per image, one set of boxes per fold and flip."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from utils.config import MAX_IMAGE_SIZE
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
    trainable_layers: int = 3
    image_size: int = 512
    predict_size: int = 1024
    val_batch_size: int = 6
    score_threshold: float = 0.001
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    proposals: int = 1000
    roi_samples: int = 512
    fpn_channels: int = 256
    box_head_size: int = 1024
    negative_fraction: float = 1.0
    pretrain_epochs: int = 10
    folds: list[int] | None = None
    # last: the fixed schedule's last epoch (the held-out fold is only watched); opacity_ap/loss choose
    # the best epoch on the held-out fold it is then scored on (an optimistic out-of-fold figure).
    monitor: Literal["last", "opacity_ap", "loss"] = "last"

    def __post_init__(self):
        super().__post_init__()
        # Upper bounds far above any useful value, below what would exhaust memory building the network.
        problems = [f"{name} must be in 1-{high}, got {value}" for name, value, high in (
            ("predict_size", self.predict_size, MAX_IMAGE_SIZE), ("val_batch_size", self.val_batch_size, 4096),
            ("detections_per_image", self.detections_per_image, 1000), ("proposals", self.proposals, 10_000),
            ("roi_samples", self.roi_samples, 4096), ("fpn_channels", self.fpn_channels, 1024),
            ("box_head_size", self.box_head_size, 8192), ("pretrain_epochs", self.pretrain_epochs, 10_000))
            if not 1 <= value <= high]
        if not 0 <= self.trainable_layers <= 5:
            problems.append(f"trainable_layers must be in 0-5, got {self.trainable_layers}")
        for name in ("score_threshold", "nms_threshold", "negative_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))
        check_pretrained_source(self.arch, self.backbone)
        # Resolved here, so the manifest's copy of this config names the normalisation the weights need.
        self.normalization = resolve_normalization(self.normalization, self.arch)


class FasterRCNNMember(Member):
    manifest_kind = "faster_rcnn"
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
