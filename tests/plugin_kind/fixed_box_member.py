"""The prediction side of the test's plugin kind (fixed_box_kind.py): its own module, importing nothing
of training, as the predictor (and the Kaggle notebook) need."""

from __future__ import annotations

import numpy as np
import torch

from utils.ensemble.fusion import MemberPrediction
from utils.kinds.member import Member


def fold_weights(path) -> torch.Tensor:
    """``[x1, y1, x2, y2, score]`` of a fold, read as data."""
    return torch.load(path, map_location="cpu", weights_only=True)


class FixedBoxMember(Member):
    kind = "fixed_box"

    def __init__(self, name, spec, weights_dir, device):
        super().__init__(name, spec, weights_dir, device)
        self.models = [fold_weights(path).numpy().astype(np.float64) for path in self.files]

    def set_channels_last(self, enabled: bool) -> bool:
        return False

    def predict(self, images, tta, precision, with_opacity_map=False) -> MemberPrediction:
        sources = [(model[None, :4], model[4:5]) for model in self.models]
        return MemberPrediction(boxes=[list(sources) for _ in range(len(images))])
