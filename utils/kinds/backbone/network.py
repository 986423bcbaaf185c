"""The backbone's network: a trunk and one linear layer of the 14 NIH findings' logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.nets.models import (
    NORMALIZATION_AUTO,
    PRETRAINED_NONE,
    InputNormalization,
    build_feature_trunk,
    resolve_normalization,
)


class MultiLabelClassifier(nn.Module):
    """A trunk (:func:`build_feature_trunk`: torchvision ResNet/ResNeXt or ``"timm:<name>"``) + one linear
    layer of independent logits on its pooled last map (the 14 NIH findings); BCE-with-logits loss.
    Takes ``(B, 3, H, W)`` images in [0, 1] and normalises them as its trunk wants (``"auto"``), so the
    study classifier and Faster R-CNN that start from this trunk normalise alike."""

    def __init__(self, n_outputs: int, arch: str = "resnext50_32x4d", pretrained: str | None = PRETRAINED_NONE):
        super().__init__()
        self.normalize = InputNormalization(resolve_normalization(NORMALIZATION_AUTO, arch))
        self.trunk, channels, self.feature_maps = build_feature_trunk(arch, pretrained)
        self.head = nn.Linear(channels[-1], n_outputs)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(self.feature_maps(self.trunk, self.normalize(images))[-1].mean(dim=(2, 3)))
        outputs = {"logits": logits}
        if targets is not None:
            # Logits-based loss: autocast runs it in float32, so half precision stays stable.
            outputs["loss_bce"] = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        return outputs
