"""Augmentation presets, chosen by name; each is declared once here.

Every pipeline is an albumentations 2.x ``Compose(strict=True)``, so an argument from the 1.x API
raises instead of being ignored silently. Inputs are uint8 RGB arrays (grayscale radiographs
replicated to three channels for ImageNet-initialised trunks); outputs are float CHW tensors
normalised with the ImageNet statistics.
"""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from utils.models import IMAGENET_MEAN, IMAGENET_STD


def _finish() -> list:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()]


def nih_train(image_size: int, resize: int) -> A.Compose:
    """The report's backbone training augmentations: shorter side to ``resize``, centre crop, horizontal
    flip (p=0.5), blur (p=0.3), rotation up to 20 degrees (p=1), random erasing of 1-10% of the area
    (p=0.3, after normalisation so the erased patch is the mean, as torchvision's RandomErasing)."""
    return A.Compose([
        A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_AREA),
        A.CenterCrop(image_size, image_size),
        A.HorizontalFlip(p=0.5),
        A.Blur(blur_limit=(3, 5), p=0.3),
        A.Rotate(limit=20, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        A.Erasing(scale=(0.01, 0.10), ratio=(0.3, 3.3), fill=0, p=0.3),
        ToTensorV2(),
    ], strict=True)


def nih_eval(image_size: int, resize: int) -> A.Compose:
    return A.Compose([
        A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_AREA),
        A.CenterCrop(image_size, image_size),
        *_finish(),
    ], strict=True)


def study_train(image_size: int, resize: int | None = None) -> A.Compose:
    """Study classifier training: the whole square image (the opacities reach the borders, so no crop),
    flip, a mild affine jitter and brightness/contrast changes."""
    return A.Compose([
        A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        *_finish(),
    ], strict=True)


def study_eval(image_size: int, resize: int | None = None) -> A.Compose:
    return A.Compose([A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA), *_finish()], strict=True)


PRESETS = {
    "nih_train": nih_train,
    "nih_eval": nih_eval,
    "study_train": study_train,
    "study_eval": study_eval,
}


def build_transform(name: str, image_size: int, resize: int | None = None) -> A.Compose:
    """The preset called ``name``; an unknown name raises and lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](image_size, resize)
