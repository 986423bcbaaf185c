"""Box formats and the only place that converts between them.

Named formats (every array is float, shape (N, 4)):

- ``KAGGLE_XYWH``: ``x, y, width, height`` in original DICOM pixels, top-left origin
  (the ``boxes`` column of ``train_image_level.csv``).
- ``XYXY_PX``: ``x1, y1, x2, y2`` in absolute pixels of some image.
- ``XYXY_NORM``: ``x1, y1, x2, y2`` divided by the image width/height, in [0, 1]
  (what weighted boxes fusion wants).
- ``CXCYWH_NORM``: YOLO's ``cx, cy, w, h`` normalised to [0, 1].

All functions are pure: they return new arrays and never modify their input.
"""

from __future__ import annotations

import numpy as np

# Normalised coordinates this far outside [0, 1] are rounding (fp16 outputs, resizes, CSV decimals)
# and are clipped; anything further out means the boxes are not normalised (a bug upstream).
NORM_TOLERANCE = 1e-3


def as_boxes(boxes) -> np.ndarray:
    """Any sequence of 4-number boxes -> float64 array of shape (N, 4); empty -> (0, 4)."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {array.shape}")
    return array.copy()


def kaggle_xywh_to_xyxy(boxes) -> np.ndarray:
    """KAGGLE_XYWH (pixels) -> XYXY_PX (pixels)."""
    b = as_boxes(boxes)
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def xyxy_to_kaggle_xywh(boxes) -> np.ndarray:
    """XYXY_PX (pixels) -> KAGGLE_XYWH (pixels)."""
    b = as_boxes(boxes)
    b[:, 2] -= b[:, 0]
    b[:, 3] -= b[:, 1]
    return b


def normalize_xyxy(boxes, width: float, height: float) -> np.ndarray:
    """XYXY_PX in an image of ``width`` x ``height`` pixels -> XYXY_NORM."""
    b = as_boxes(boxes)
    b[:, [0, 2]] /= float(width)
    b[:, [1, 3]] /= float(height)
    return b


def denormalize_xyxy(boxes, width: float, height: float) -> np.ndarray:
    """XYXY_NORM -> XYXY_PX in an image of ``width`` x ``height`` pixels."""
    b = as_boxes(boxes)
    b[:, [0, 2]] *= float(width)
    b[:, [1, 3]] *= float(height)
    return b


def xyxy_norm_to_cxcywh(boxes) -> np.ndarray:
    """XYXY_NORM -> CXCYWH_NORM (YOLO label format)."""
    b = as_boxes(boxes)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] + b[:, 2]) / 2
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2
    out[:, 2] = b[:, 2] - b[:, 0]
    out[:, 3] = b[:, 3] - b[:, 1]
    return out


def hflip_xyxy(boxes, width: float) -> np.ndarray:
    """Mirror XYXY boxes left-right in an image of ``width`` (use 1.0 for XYXY_NORM)."""
    b = as_boxes(boxes)
    out = b.copy()
    out[:, 0] = width - b[:, 2]
    out[:, 2] = width - b[:, 0]
    return out


def clip_xyxy(boxes, width: float, height: float) -> np.ndarray:
    """Clip XYXY boxes to ``[0, width] x [0, height]`` (use 1, 1 for XYXY_NORM)."""
    b = as_boxes(boxes)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0.0, float(width))
    b[:, [1, 3]] = b[:, [1, 3]].clip(0.0, float(height))
    return b


def valid_box_mask(boxes, min_size: float = 0.0) -> np.ndarray:
    """Boolean mask of XYXY boxes that are finite and wider and taller than ``min_size``.

    The one helper every stage uses to drop boxes that degenerate after clipping or augmentation.
    """
    b = as_boxes(boxes)
    finite = np.isfinite(b).all(axis=1)
    with np.errstate(invalid="ignore"):
        return finite & (b[:, 2] - b[:, 0] > min_size) & (b[:, 3] - b[:, 1] > min_size)


def keep_valid_boxes(boxes, width: float, height: float, min_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Clip XYXY boxes to the image and drop those that degenerate (narrower or shorter than
    ``min_size``): ``(kept boxes, kept mask)``. The one rule applied after resizing and augmentation;
    use the mask to drop the matching labels."""
    clipped = clip_xyxy(boxes, width, height)
    mask = valid_box_mask(clipped, min_size)
    return clipped[mask], mask


def iou_matrix(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise IoU of XYXY boxes (any one unit): shape (len(a), len(b)); 0 where the union is 0."""
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (ix2 - ix1).clip(min=0) * (iy2 - iy1).clip(min=0)
    area_a = ((a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0))[:, None]
    area_b = ((b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0))[None, :]
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def boxes_to_mask(boxes_norm, height: int, width: int) -> np.ndarray:
    """XYXY_NORM boxes -> uint8 (height, width) mask, 1 inside any box (the study model's auxiliary
    segmentation target: opacity boxes are all the competition says about where the opacity is)."""
    mask = np.zeros((int(height), int(width)), dtype=np.uint8)
    pixels = clip_xyxy(denormalize_xyxy(boxes_norm, width, height), width, height)
    for x1, y1, x2, y2 in pixels:
        mask[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = 1
    return mask
