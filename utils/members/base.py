"""What every inference member provides: one manifest model's folds loaded for prediction. The predictor
(make_submission, the notebook, the web app) uses members only, so prediction imports nothing of
training; each kind's training side (``utils/kinds/``) names its member."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from utils.boxes import hflip_xyxy
from utils.fusion import MemberPrediction
from utils.manifest import entry_files
from utils.runtime import Precision

Detections = list[tuple[np.ndarray, np.ndarray]]  # per source: (XYXY_NORM boxes (n, 4), scores (n,))


def model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W)`` -> float ``(B, 3, H, W)`` in [0, 1], grey replicated to three channels: the
    eval presets' output, what every model takes (each normalises inside, as its trunk wants)."""
    return images.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)


def with_flipped(per_image: list[Detections], flipped: list[Detections]) -> list[Detections]:
    """Each image's sources plus its mirror image's sources with the boxes flipped back."""
    return [own + [(hflip_xyxy(b, 1.0), s) for b, s in mirror] for own, mirror in zip(per_image, flipped)]


class Member:
    """One manifest model's folds, loaded for prediction. ``predict(images, tta, precision,
    with_opacity_map)`` takes uint8 ``(B, S, S)`` images on the device at ``input_size`` and returns one
    :class:`~utils.fusion.MemberPrediction` for the batch: a detector's boxes per image (one source per
    fold and flip), a classifier's probabilities, or both; the predictor merges it with
    :func:`~utils.fusion.add_member_prediction` and never asks what kind it is."""

    manifest_kind: ClassVar[str]  # the "kind" of the manifest entries it loads (its kind's manifest_kind)
    has_opacity_map: bool = False  # whether ``with_opacity_map`` gives maps

    def __init__(self, name: str, spec: dict, weights_dir: Path, device: torch.device):
        self.name = name
        self.kind = spec["kind"]
        self.config = spec.get("config", {})
        self.folds, self.files, self.input_size = entry_files(weights_dir, name, spec)
        self.device = device

    def predict(self, images: torch.Tensor, tta: bool, precision: Precision,
                with_opacity_map: bool = False) -> MemberPrediction:
        raise NotImplementedError

    def uses_tta(self, config) -> bool:
        """Whether the ensemble's settings (``EnsembleConfig``) ask for this member's test-time views: a
        detector's mirror image (``tta_hflip``)."""
        return config.tta_hflip

    def set_channels_last(self, enabled: bool) -> bool:
        """Keep the folds' weights channels-last (``enabled``) or contiguous; convolutions then run in
        that layout (faster on tensor cores for some models: measured by ``infer/benchmark.py
        inference --compare-channels-last``). Returns whether this member's models support it."""
        layout = torch.channels_last if enabled else torch.contiguous_format
        for model in self.models:
            model.to(memory_format=layout)
        return True
