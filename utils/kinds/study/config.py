"""The ``study`` section: the kind's config schema, each key with its default and
documentation (all of them: docs/reference.md, "Settings"); read by training and, from the
manifest's copy, by its member."""

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
    """The ``study`` section: the study classifier (4 study classes + the image "none"), per fold."""

    arch: str = "resnext50_32x4d"
    """The trunk's architecture (the NIH checkpoint's when it starts from one): a torchvision name or timm:<name>."""
    backbone: str = PRETRAINED_NONE
    """Trunk weights: NIH checkpoint | torchvision .pth | imagenet | none | imagenet-lite (arch
    timm:tf_efficientnet_lite0|1|2; the ImageNet option without NIH, offline)."""
    normalization: str = NORMALIZATION_AUTO
    """Input normalisation inside the model: auto (lite for the Lite trunks, else imagenet) | imagenet | lite."""
    image_size: ImageSize = 512
    """Square input side (from the prepared PNGs)."""
    folds: Folds | None = None
    """Folds to train (null: every fold in meta.csv)."""
    none_weight: Weight = 1.0
    """Weight of the image-level none loss."""
    seg_weight: Weight = 0.0
    """Weight of the auxiliary opacity segmentation loss (BCE + Dice on a mask drawn from the boxes; 0: no
    segmentation head)."""
    decoder_width: Annotated[int, Field(ge=1, le=1024)] = 64
    """Channels of the segmentation head's feature pyramid."""
    label_smoothing: FractionBelowOne = 0.0
    """Label smoothing of the study and none targets."""
    class_weights: list[Weight] | None = None
    """Study cross-entropy weight per class (negative, typical, indeterminate, atypical; null: equal)."""
    mixup_alpha: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    """Mixup of each training batch (images and every target), lam ~ Beta(a, a); 0: off."""
    teacher: str | None = None
    """Self-distillation teacher (utils/kinds/study/distillation.py): a predictions CSV (an earlier run's
    oof_predictions.csv) whose probabilities the training images also learn."""
    distill_weight: Weight = 0.0
    """k of the loss (hard + k * soft) / (1 + k); 0 without a teacher."""
    distill_temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    """The teacher's probabilities ** (1 / T), renormalised (< 1 sharpens)."""
    tta_views: list[str] = field(default_factory=lambda: list(FLIP))
    """Test-time views averaged (utils/kinds/study/tta.py: identity, hflip, zoom_in, zoom_out, shift_up,
    shift_down, joined with +), out of fold and at test time."""
    monitor: Literal["last", "study_map", "loss"] = "last"
    """last (the schedule's last epoch: the scored fold never chooses) | study_map | loss (the best epoch on the
    fold then scored: optimistic)."""

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
