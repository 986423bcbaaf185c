"""The study classifier's inference member: study class and none probabilities over its folds and TTA
views, and on request the auxiliary head's opacity map."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from utils.core.runtime import Precision
from utils.ensemble.fusion import MemberPrediction
from utils.kinds.member import Member, model_input
from utils.kinds.study.config import StudyConfig
from utils.kinds.study.network import StudyClassifier
from utils.kinds.study.tta import PLAIN, StudyTTA
from utils.nets.models import PRETRAINED_NONE


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


MEMBER = StudyMember  # what the member registry (utils/kinds/members.py) loads for kind 'study'
