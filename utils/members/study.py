"""The study classifier's inference member: study class and none probabilities over its folds and TTA
views, and on request the auxiliary head's opacity map."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from utils.config import Folds, FractionBelowOne, ImageSize, Weight
from utils.fusion import MemberPrediction
from utils.labels import STUDY_CLASSES
from utils.loop_config import TrainConfig
from utils.members.base import Member, model_input
from utils.models import (
    NORMALIZATION_AUTO,
    PRETRAINED_NONE,
    StudyClassifier,
    check_class_weights,
    check_pretrained_source,
    resolve_normalization,
)
from utils.runtime import Precision
from utils.tta import FLIP, PLAIN, StudyTTA, check_views


@dataclass
class StudyConfig(TrainConfig):
    """The ``study`` section (train/configs/*.yaml document every key)."""

    arch: str = "resnext50_32x4d"
    backbone: str = PRETRAINED_NONE
    normalization: str = NORMALIZATION_AUTO
    image_size: ImageSize = 512
    folds: Folds | None = None
    none_weight: Weight = 1.0
    seg_weight: Weight = 0.0
    decoder_width: Annotated[int, Field(ge=1, le=1024)] = 64
    label_smoothing: FractionBelowOne = 0.0
    # Cross-entropy weight per study class (negative, typical, indeterminate, atypical); null: equal.
    class_weights: list[Weight] | None = None
    tta_views: list[str] = field(default_factory=lambda: list(FLIP))
    # last: the fixed schedule's last epoch (the held-out fold is only watched); study_map/loss choose the
    # best epoch on the held-out fold it is then scored on (an optimistic out-of-fold figure).
    monitor: Literal["last", "study_map", "loss"] = "last"

    def __post_init__(self):
        super().__post_init__()
        check_views(self.tta_views)
        check_pretrained_source(self.arch, self.backbone)
        # Resolved here, so the manifest's copy of this config names the normalisation the weights need.
        self.normalization = resolve_normalization(self.normalization, self.arch)
        check_class_weights(self.class_weights, len(STUDY_CLASSES))


class StudyMember(Member):
    """The study classifier's folds: study class and none probabilities, averaged over folds and the
    model's TTA views (its config's ``tta_views``; the identity alone when the ensemble's
    ``study_tta`` is off), and on request the auxiliary head's opacity map."""

    kind = "study"
    config_class = StudyConfig
    legacy_defaults = {"normalization": "imagenet"}  # the only normalisation before the key existed

    def __init__(self, name, spec, weights_dir, device: torch.device):
        super().__init__(name, spec, weights_dir, device)
        self.models = [self.fold_network(lambda: StudyClassifier.from_config(asdict(self.config), PRETRAINED_NONE),
                                         path) for path in self.files]
        self.views = self.config.tta_views

    def uses_tta(self, config) -> bool:
        return config.study_tta

    @property
    def has_opacity_map(self) -> bool:
        return self.models[0].decoder is not None

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tta: bool, precision: Precision,
                with_opacity_map: bool = False) -> MemberPrediction:
        """uint8 ``(B, S, S)`` on the device -> study probabilities (B, 4), none probability (B,) and, when
        asked and the folds have the auxiliary head, opacity probability maps (B, h, w) of the
        unaugmented image."""
        batch = model_input(images)
        views = self.views if tta else PLAIN
        study, none, maps = 0.0, 0.0, None
        want_maps = with_opacity_map and self.has_opacity_map
        for model in self.models:
            with torch.autocast(batch.device.type, dtype=precision.dtype, enabled=precision.enabled):
                study_probs, none_probs = StudyClassifier.probabilities(StudyTTA(model, views)(batch))
                if want_maps:
                    fold_maps = model(batch, with_mask=True)["mask_logits"].float().sigmoid()[:, 0]
                    maps = fold_maps if maps is None else maps + fold_maps
            study = study + study_probs
            none = none + none_probs
        n = len(self.models)
        return MemberPrediction(study_probs=(study / n).cpu().numpy().astype(np.float64),
                                none_probs=(none / n).cpu().numpy().astype(np.float64),
                                opacity_maps=None if maps is None else (maps / n).cpu().numpy())
