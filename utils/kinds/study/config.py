"""The ``study`` section: the kind's config schema (train/configs/*.yaml document every key); read by
training and, from the manifest's copy, by its member."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

from utils.core.config import Folds, FractionBelowOne, ImageSize, Weight, short
from utils.core.loop_config import TrainConfig
from utils.data.labels import STUDY_CLASSES
from utils.kinds.study.network import check_class_weights
from utils.kinds.study.tta import FLIP, check_views
from utils.nets.models import NORMALIZATION_AUTO, PRETRAINED_NONE, check_pretrained_source, resolve_normalization


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
    # Mixup of each training batch (images, study and none targets, opacity masks), lam ~ Beta(a, a); 0: off.
    mixup_alpha: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    # Self-distillation (utils/kinds/study/distillation.py): a predictions CSV (an earlier run's
    # oof_predictions.csv) whose probabilities every training image also learns, with weight k
    # (loss (hard + k * soft) / (1 + k)), sharpened (< 1) or softened (> 1) by the temperature.
    teacher: str | None = None
    distill_weight: Weight = 0.0
    distill_temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
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
        if (self.teacher is None) != (self.distill_weight == 0):
            raise ValueError("teacher and distill_weight go together: a teacher's predictions CSV and a weight > 0, "
                             f"or neither (got teacher={short(self.teacher)}, distill_weight={self.distill_weight})")
