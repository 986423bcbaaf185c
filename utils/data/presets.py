"""Augmentation presets, chosen by name; each is declared once here.

Every pipeline is an albumentations 2.x ``Compose(strict=True)``, so an argument from the 1.x API
raises instead of being ignored silently. Inputs are uint8 RGB arrays (grayscale radiographs
replicated to three channels for ImageNet-initialised trunks). Every preset ends in float CHW tensors
in [0, 1]: each model normalises its input itself, as its trunk wants (``utils.nets.models.InputNormalization``,
torchvision's detector transform), so no preset needs to know the trunk. Detector presets
(``DETECTION_PRESETS``) also move ``bboxes`` (XYXY pixels, ``pascal_voc``) with their ``labels``.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from utils.nets.models import IMAGENET_MEAN


def _finish() -> list:
    return [A.ToFloat(max_value=255.0), ToTensorV2()]


def nih_train(image_size: int, resize: int) -> A.Compose:
    """The report's backbone training augmentations: shorter side to ``resize``, centre crop, horizontal
    flip (p=0.5), blur (p=0.3), rotation up to 20 degrees (p=1), random erasing of 1-10% of the area
    (p=0.3, filled with the ImageNet mean: the backbone normalises it to 0, as torchvision's RandomErasing)."""
    return A.Compose([
        A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_AREA),
        A.CenterCrop(image_size, image_size),
        A.HorizontalFlip(p=0.5),
        A.Blur(blur_limit=(3, 5), p=0.3),
        A.Rotate(limit=20, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
        A.ToFloat(max_value=255.0),
        A.Erasing(scale=(0.01, 0.10), ratio=(0.3, 3.3), fill=IMAGENET_MEAN, p=0.3),
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


class CircularCutout(A.ImageOnlyTransform):
    """Fill 1 to ``max_holes`` discs (radius a fraction of the shorter side) with ``fill``.

    Image only: the boxes stay as they are (an occluded opacity is still there). Albumentations has
    rectangular erasing but no circles, which the report used.
    """

    def __init__(self, max_holes: int = 6, radius_range: tuple[float, float] = (0.02, 0.06), fill: int = 0,
                 p: float = 0.5):
        super().__init__(p=p)
        if max_holes < 1 or not 0 < radius_range[0] <= radius_range[1]:
            raise ValueError(f"need max_holes >= 1 and 0 < radius_range[0] <= radius_range[1], got "
                             f"{max_holes}, {radius_range}")
        self.max_holes = max_holes
        self.radius_range = tuple(radius_range)
        self.fill = fill

    def get_params_dependent_on_data(self, params, data) -> dict:
        height, width = params["shape"][:2]
        side = min(height, width)
        holes = []
        for _ in range(self.py_random.randint(1, self.max_holes)):
            radius = max(1, round(self.py_random.uniform(*self.radius_range) * side))
            holes.append((self.py_random.randrange(width), self.py_random.randrange(height), radius))
        return {"holes": holes}

    def apply(self, img: np.ndarray, holes=(), **params) -> np.ndarray:
        out = img.copy()
        for x, y, radius in holes:
            cv2.circle(out, (int(x), int(y)), int(radius), (self.fill,) * out.shape[-1] if out.ndim == 3 else self.fill,
                       thickness=-1)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_holes", "radius_range", "fill")


def _bboxes() -> A.BboxParams:
    # Boxes leaving the image are clipped here; the ones that degenerate are dropped afterwards by the
    # dataset with utils.data.boxes.keep_valid_boxes (one rule for every stage).
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True)


def frcnn_train(image_size: int, resize: int | None = None) -> A.Compose:
    """The report's Faster R-CNN augmentations, image and boxes together: horizontal flip (p=0.3),
    shift-scale-rotate up to 20 degrees (p=0.3), sharpen (p=0.5) or else blur (p=0.25), brightness and
    contrast (p=0.3), up to 6 circular cutouts (p=0.3)."""
    return A.Compose([
        A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.3),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-20, 20),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.3),
        # OneOf picks a child in proportion to its p; with p=0.75 overall that is sharpen 0.5, blur 0.25.
        A.OneOf([A.Sharpen(p=0.5), A.Blur(blur_limit=(3, 5), p=0.25)], p=0.75),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.3),
        CircularCutout(max_holes=6, p=0.3),
        *_finish(),
    ], bbox_params=_bboxes(), strict=True)


def detector_eval(image_size: int, resize: int | None = None) -> A.Compose:
    return A.Compose([A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA), *_finish()],
                     bbox_params=_bboxes(), strict=True)


PRESETS = {
    "nih_train": nih_train,
    "nih_eval": nih_eval,
    "study_train": study_train,
    "study_eval": study_eval,
    "frcnn_train": frcnn_train,
    "detector_eval": detector_eval,
}
DETECTION_PRESETS = ("frcnn_train", "detector_eval")


def build_transform(name: str, image_size: int, resize: int | None = None) -> A.Compose:
    """The preset called ``name``; an unknown name raises and lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](image_size, resize)
