"""Faster R-CNN's inference member: per image, one set of boxes per fold and flip."""

from __future__ import annotations

from dataclasses import asdict

import torch

from utils.core.runtime import Precision
from utils.ensemble.fusion import MemberPrediction
from utils.kinds.frcnn.config import FrcnnConfig
from utils.kinds.frcnn.network import detector_from_config, load_detector_state, unpad_detections
from utils.kinds.member import Detections, Member, model_input, with_flipped
from utils.nets.models import PRETRAINED_NONE


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


MEMBER = FasterRCNNMember  # what the member registry (utils/kinds/members.py) loads for kind 'frcnn'
