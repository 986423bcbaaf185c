"""Test-time augmentation of the study classifier: named views of a batch, and a wrapper that averages
the probabilities over them. One home for training's out-of-fold prediction, the predictor (so
``make_submission.py``, the Kaggle notebook and the web app) and the ablation.

A view is a name of :data:`VIEW_OPERATIONS` or several joined by ``+`` (``"zoom_in+hflip"``): the
operations act on a normalised ``(B, C, H, W)`` batch and keep its size. The zooms are the affine
jitter of the ``study_train`` preset at its extremes (scale 0.9 and 1.1); pixels from outside the
image repeat the border.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.core.config import short

ZOOM = 1.1
SHIFT = 0.05  # fraction of the side, as the training preset's translation


def _affine(batch: torch.Tensor, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> torch.Tensor:
    """Sample ``batch`` zoomed by ``scale`` (> 1: closer) and moved by (dx, dy) fractions of the side."""
    theta = torch.tensor([[1.0 / scale, 0.0, -2.0 * dx], [0.0, 1.0 / scale, -2.0 * dy]],
                         dtype=batch.dtype, device=batch.device).expand(len(batch), 2, 3)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


VIEW_OPERATIONS = {
    "identity": lambda b: b,
    "hflip": lambda b: b.flip(-1),
    "zoom_in": lambda b: _affine(b, scale=ZOOM),
    "zoom_out": lambda b: _affine(b, scale=1.0 / ZOOM),
    "shift_up": lambda b: _affine(b, dy=-SHIFT),
    "shift_down": lambda b: _affine(b, dy=SHIFT),
}
PLAIN = ("identity",)
FLIP = ("identity", "hflip")
# Eight views as the competition's 1st place used for its study models.
EIGHT_VIEWS = ("identity", "hflip", "zoom_in", "zoom_in+hflip", "zoom_out", "zoom_out+hflip", "shift_up",
               "shift_down")


def check_views(views) -> tuple[str, ...]:
    """``views`` as a tuple after checking every name; an unknown one raises and lists the known ones."""
    views = tuple(views)
    if not views:
        raise ValueError("at least one TTA view is needed (e.g. ['identity'])")
    for view in views:
        unknown = [part for part in view.split("+") if part not in VIEW_OPERATIONS]
        if unknown:
            raise ValueError(f"unknown TTA view {short(view)} (unknown {short(unknown)}); views join "
                             f"{sorted(VIEW_OPERATIONS)} with '+'")
    return views


def apply_view(batch: torch.Tensor, view: str) -> torch.Tensor:
    for part in view.split("+"):
        batch = VIEW_OPERATIONS[part](batch)
    return batch


class StudyTTA(nn.Module):
    """A study classifier seen through several views: the outputs are logits whose softmax (study) and
    sigmoid (none) are the MEAN of the views' probabilities, so every consumer of
    ``StudyClassifier.probabilities`` works unchanged. Losses (with targets) are the first view's."""

    def __init__(self, model: nn.Module, views=FLIP):
        super().__init__()
        self.model = model
        self.views = check_views(views)

    def forward(self, images: torch.Tensor, targets: dict | None = None) -> dict[str, torch.Tensor]:
        study, none, outputs = 0.0, 0.0, {}
        for k, view in enumerate(self.views):
            result = self.model(apply_view(images, view), targets if k == 0 else None)
            if k == 0:
                outputs = {key: value for key, value in result.items() if key.startswith("loss")}
            study = study + result["study_logits"].float().softmax(dim=1)
            none = none + result["none_logits"].float().sigmoid()
        n = len(self.views)
        eps = torch.finfo(torch.float32).tiny
        outputs["study_logits"] = (study / n).clamp_min(eps).log()
        outputs["none_logits"] = torch.logit((none / n).clamp(eps, 1.0 - 1e-7))
        return outputs
