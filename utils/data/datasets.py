"""Torch datasets over image files, in the engine's item format ``(image, target, index)``.

``ImageDataset`` serves classifiers (one target per image); ``DetectionDataset`` serves
torchvision's detectors (boxes and labels per image, moved together with the image).

Augmentations are seeded per item from (seed, epoch, index), so an epoch is reproducible no matter
which worker process reads which item, and a resumed run sees the same images as an uninterrupted
one. An unreadable image is logged with its path and the item becomes ``None`` (dropped by the
engine's collate function): one bad file never stops a long run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.boxes import as_boxes, boxes_to_mask, denormalize_xyxy, keep_valid_boxes

log = logging.getLogger(__name__)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def read_gray_as_rgb(path) -> np.ndarray:
    """An 8-bit grayscale image file as an (H, W, 3) uint8 array; raises ``OSError`` naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise OSError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)


class ImageDataset(Dataset):
    """Grayscale radiographs on disk with one target each.

    ``targets[i]`` is anything ``default_collate`` can batch (an array, or a dict of scalars);
    ``transform`` is an albumentations pipeline ending in ``ToTensorV2``.
    """

    def __init__(self, paths: Sequence, targets: Sequence, transform: Callable, seed: int = 0):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = [Path(p) for p in paths]
        self.targets = list(targets)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = read_gray_as_rgb(self.paths[index])
        except OSError as err:
            log.warning("skipped: %s", err)
            return None
        self.transform.set_random_seed(item_seed(self.seed, self.epoch, index))
        return (*self._transform(image, self.targets[index]), index)

    def _transform(self, image: np.ndarray, target):
        """``(image tensor, target tensors)`` of one seeded item."""
        tensor = self.transform(image=image)["image"]
        if isinstance(target, dict):
            return tensor, {k: torch.as_tensor(v) for k, v in target.items()}
        return tensor, torch.as_tensor(target)


class StudyDataset(ImageDataset):
    """The study classifier's images: targets are dicts (``study``, ``none``, ...). A target with
    ``"boxes"`` (XYXY_NORM of the original image) gets them drawn as a ``"mask"`` of the image's size
    (:func:`utils.data.boxes.boxes_to_mask`) that the augmentations move together with the image; the
    boxes themselves leave the target (their number varies, which batching does not allow)."""

    def _transform(self, image: np.ndarray, target: dict):
        target = dict(target)
        boxes = target.pop("boxes", None)
        if boxes is None:
            return super()._transform(image, target)
        out = self.transform(image=image, mask=boxes_to_mask(as_boxes(boxes), *image.shape[:2]))
        target = {k: torch.as_tensor(v) for k, v in target.items()}
        target["mask"] = torch.as_tensor(out["mask"], dtype=torch.uint8)
        return out["image"], target


class DetectionDataset(ImageDataset):
    """Radiographs with their opacity boxes, for torchvision's detectors.

    ``boxes[i]``: XYXY_NORM boxes of image ``i`` (fractions of the original DICOM, so any prepared
    size fits); an image without opacity has none and trains as a negative. ``transform`` is a
    detector preset (``bboxes`` in pascal_voc pixels with ``labels``). The target is
    ``{"boxes": float32 (N, 4) XYXY pixels of the output image, "labels": int64 (N,) all 1}``; boxes
    that degenerate under augmentation are dropped by :func:`utils.data.boxes.keep_valid_boxes`.
    """

    def __init__(self, paths: Sequence, boxes: Sequence, transform: Callable, seed: int = 0,
                 min_box_size: float = 2.0):
        super().__init__(paths, [as_boxes(b) for b in boxes], transform, seed)
        self.min_box_size = min_box_size

    def _transform(self, image: np.ndarray, boxes_norm):
        height, width = image.shape[:2]
        boxes, _ = keep_valid_boxes(denormalize_xyxy(boxes_norm, width, height), width, height)
        out = self.transform(image=image, bboxes=boxes, labels=np.ones(len(boxes), dtype=np.int64))
        tensor = out["image"]
        kept, mask = keep_valid_boxes(np.asarray(out["bboxes"]).reshape(-1, 4), tensor.shape[-1], tensor.shape[-2],
                                      self.min_box_size)
        return tensor, {"boxes": torch.as_tensor(kept, dtype=torch.float32),
                        "labels": torch.as_tensor(np.asarray(out["labels"])[mask], dtype=torch.int64)}
