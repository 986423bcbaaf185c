"""Faster R-CNN's inference member: per image, one set of boxes per fold and flip."""

from __future__ import annotations

import torch

from utils.frcnn import detector_from_config, load_detector_state, unpad_detections
from utils.fusion import MemberPrediction
from utils.manifest import load_state_dict_file
from utils.members.base import Detections, Member, model_input, with_flipped
from utils.models import PRETRAINED_NONE
from utils.runtime import Precision


class FasterRCNNMember(Member):
    manifest_kind = "faster_rcnn"

    def __init__(self, name, spec, weights_dir, device: torch.device):
        super().__init__(name, spec, weights_dir, device)
        self.models = []
        for path in self.files:
            model = detector_from_config(self.config, PRETRAINED_NONE, self.input_size)
            load_detector_state(model, load_state_dict_file(path), path)
            self.models.append(model.to(device).eval())

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
