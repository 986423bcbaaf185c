"""The study classifier's network: a trunk (:func:`utils.nets.models.build_feature_trunk`) with the four study
classes and the image "none" as heads, the auxiliary opacity segmentation head and its loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.core.config import short
from utils.nets.models import (
    NORMALIZATION_AUTO,
    PRETRAINED_NONE,
    InputNormalization,
    build_feature_trunk,
    resolve_normalization,
)


class OpacityDecoder(nn.Module):
    """The auxiliary segmentation head: a light feature pyramid over the trunk's last three maps
    (strides 8, 16, 32), top-down with nearest upsampling, ending in one opacity logit per pixel at
    stride 8. Trained against a mask drawn from the image's opacity boxes (as the best solutions of
    this competition did); it makes the trunk look at the opacities, the classifier heads benefit."""

    def __init__(self, channels: tuple[int, int, int], width: int = 64):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        merged = self.lateral[-1](maps[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            merged = lateral(feature) + F.interpolate(merged, size=feature.shape[-2:], mode="nearest")
        return self.out(self.smooth(merged))


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of ``logits`` (B, 1, h, w) against ``masks`` (B, H, W) in {0, 1}, only over the
    images whose ``valid`` is 1 (an un-annotated image's boxes are unknown). The masks are
    area-averaged to the logits' size (soft targets at the borders); Dice is taken over all valid
    pixels of the batch together, so an image without opacity adds to it through its false positives."""
    logits = logits.float()
    targets = F.adaptive_avg_pool2d(masks.float().unsqueeze(1), logits.shape[-2:])
    weights = valid.float().view(-1, 1, 1, 1).expand_as(logits)
    if weights.sum() == 0:
        return logits.sum() * 0.0  # keeps the graph (DDP) with no contribution
    bce = F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="sum") / weights.sum()
    probs = logits.sigmoid() * weights
    dice = 1.0 - (2.0 * (probs * targets).sum() + 1.0) / (probs.sum() + (targets * weights).sum() + 1.0)
    return bce + dice


def mix_batch(images: torch.Tensor, targets: dict, alpha: float, n_classes: int = 4) -> tuple[torch.Tensor, dict]:
    """Mixup of a training batch: each image blended with another of the batch (a random permutation)
    at one weight ``lam ~ Beta(alpha, alpha)``, and its targets alike: the study target as class
    probabilities (``study_probs``), the none target, and the opacity mask as a soft mask, kept only where
    both images' boxes are known (``mask_valid`` of both). Draws from torch's global generator, which
    the engine reseeds each epoch (resume stays exact)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(images), device=images.device)

    def mix(value: torch.Tensor) -> torch.Tensor:
        value = value.float()
        return lam * value + (1.0 - lam) * value[order]

    study = (targets["study_probs"].float() if "study_probs" in targets
             else F.one_hot(targets["study"].long(), n_classes).float())
    mixed = {**targets, "study_probs": mix(study), "none": mix(targets["none"])}
    mixed.pop("study", None)
    if "mask" in targets:
        mixed["mask"] = mix(targets["mask"])
        mixed["mask_valid"] = targets["mask_valid"].float() * targets["mask_valid"].float()[order]
    return mix(images), mixed


def check_class_weights(weights, n_classes: int = 4) -> None:
    """``weights``: None (equal) or one finite weight > 0 per study class; else ValueError."""
    if weights is not None and (len(weights) != n_classes or not all(math.isfinite(w) and w > 0 for w in weights)):
        raise ValueError(f"class_weights: need {n_classes} finite weights > 0, one per class, got {short(weights)}")


class StudyClassifier(nn.Module):
    """A trunk (:func:`build_feature_trunk`: torchvision ResNet/ResNeXt or any timm model) with two heads
    on its pooled last feature map: the four study classes (softmax) and the image-level "none"
    (sigmoid); optionally (``seg_weight`` > 0) the auxiliary :class:`OpacityDecoder`. Takes
    ``(B, 3, H, W)`` images in [0, 1] and normalises them as its trunk wants (``normalization``).

    Targets: ``{"study": int64 class index, "none": float in [0, 1]}``, optionally ``"study_probs"``
    (float (4,): a soft study target, used instead of ``"study"``: pseudo-labels), plus ``"mask"``
    (uint8 (H, W) drawn from the boxes) and ``"mask_valid"`` with the decoder. Losses, all from logits in float32:
    cross-entropy on the study logits (``label_smoothing``, per-class ``class_weights``), BCE on the none
    logit (its target smoothed the same way, times ``none_weight``) and ``seg_weight`` x :func:`segmentation_loss`;
    with ``mixup_alpha`` > 0 each training batch is mixed first (:func:`mix_batch`).
    The decoder runs in training and validation (it has a loss there) and in prediction only when
    ``with_mask`` asks for the ``mask_logits`` output.
    """

    def __init__(self, arch: str = "resnext50_32x4d", pretrained: str | None = PRETRAINED_NONE,
                 n_classes: int = 4, none_weight: float = 1.0, seg_weight: float = 0.0,
                 label_smoothing: float = 0.0, decoder_width: int = 64, normalization: str = NORMALIZATION_AUTO,
                 class_weights: list[float] | None = None, mixup_alpha: float = 0.0):
        super().__init__()
        check_class_weights(class_weights, n_classes)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if seg_weight < 0:
            raise ValueError(f"seg_weight must be >= 0, got {seg_weight}")
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
        self.normalize = InputNormalization(resolve_normalization(normalization, arch))
        self.trunk, channels, self.feature_maps = build_feature_trunk(arch, pretrained)
        self.study_head = nn.Linear(channels[-1], n_classes)
        self.none_head = nn.Linear(channels[-1], 1)
        self.decoder = OpacityDecoder(channels, decoder_width) if seg_weight > 0 else None
        self.none_weight = none_weight
        self.seg_weight = seg_weight
        self.label_smoothing = label_smoothing
        # A plain attribute, not a buffer: a loss setting, so the weights files stay the same without it.
        self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)
        self.mixup_alpha = float(mixup_alpha)  # a training setting, like the loss weights: not in the weights

    @classmethod
    def from_config(cls, config: dict, pretrained: str | None = PRETRAINED_NONE) -> "StudyClassifier":
        """The network a study config describes (the ``study`` section, or a manifest's copy of it:
        keys absent from older manifests take the defaults that were then the only behaviour: ImageNet
        normalisation before ``normalization`` existed)."""
        return cls(config["arch"], pretrained, none_weight=float(config.get("none_weight", 1.0)),
                   seg_weight=float(config.get("seg_weight", 0.0)),
                   label_smoothing=float(config.get("label_smoothing", 0.0)),
                   decoder_width=int(config.get("decoder_width", 64)),
                   normalization=config.get("normalization", "imagenet"),
                   class_weights=config.get("class_weights"), mixup_alpha=float(config.get("mixup_alpha", 0.0)))

    def forward(self, images: torch.Tensor, targets: dict | None = None,
                with_mask: bool = False) -> dict[str, torch.Tensor]:
        if self.training and targets is not None and self.mixup_alpha > 0:
            images, targets = mix_batch(images, targets, self.mixup_alpha, self.study_head.out_features)
        maps = self.feature_maps(self.trunk, self.normalize(images))
        pooled = maps[-1].mean(dim=(2, 3))
        outputs = {"study_logits": self.study_head(pooled), "none_logits": self.none_head(pooled)[:, 0]}
        if self.decoder is not None and (targets is not None or with_mask):
            outputs["mask_logits"] = self.decoder(maps)
        if targets is not None:
            eps = self.label_smoothing
            # Pseudo-labelled images carry soft targets: then every item of the batch has "study_probs"
            # (a real label as one-hot), which cross-entropy takes as class probabilities.
            study = targets["study_probs"].float() if "study_probs" in targets else targets["study"].long()
            weight = (None if self.class_weights is None
                      else torch.tensor(self.class_weights, device=images.device, dtype=torch.float32))
            outputs["loss_study"] = F.cross_entropy(outputs["study_logits"].float(), study, weight=weight,
                                                    label_smoothing=eps)
            none_target = targets["none"].float() * (1.0 - eps) + 0.5 * eps
            outputs["loss_none"] = self.none_weight * F.binary_cross_entropy_with_logits(
                outputs["none_logits"].float(), none_target)
            if self.decoder is not None:
                outputs["loss_seg"] = self.seg_weight * segmentation_loss(
                    outputs["mask_logits"], targets["mask"], targets["mask_valid"])
        return outputs

    @staticmethod
    def probabilities(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(study probabilities (N, 4), none probability (N,))`` from :meth:`forward`'s logits."""
        return outputs["study_logits"].float().softmax(dim=1), outputs["none_logits"].float().sigmoid()
