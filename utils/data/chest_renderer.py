"""Pixels that look like a chest radiograph (body, dark lung fields, ribs, mediastinum, noise) and
opacities drawn strictly inside their boxes, a different pattern per study class, so that the synthetic
data gives detectors and classifiers something real to learn. Deterministic for a generator."""

from __future__ import annotations

import cv2
import numpy as np

from utils.data.boxes import as_boxes

# Real class mix of train_study_level.csv (1676 / 2855 / 1049 / 474 of 6054 studies).
STUDY_CLASS_PRIOR = np.array([1676, 2855, 1049, 474]) / 6054.0



def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def render_chest(rng: np.random.Generator, height: int, width: int, *, heart_scale: float = 1.0,
                 lung_darkness: float = 0.0) -> np.ndarray:
    """A chest-radiograph-like display image in [0, 1] (float32, bright = dense)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    jitter = rng.normal(0, 0.015, size=6)
    image = np.full((height, width), 0.08, np.float32)
    body = _ellipse(yy, xx, 0.58 + jitter[0], 0.5, 0.55, 0.46)
    image += 0.45 * np.clip(1.2 - body, 0, 1) ** 0.5
    lungs = np.zeros_like(image)
    for side, cx in ((0, 0.31), (1, 0.69)):
        d = _ellipse(yy, xx, 0.46 + jitter[1 + side], cx + jitter[3], 0.27, 0.14)
        lungs = np.maximum(lungs, np.clip(1.0 - d, 0, 1) ** 0.35)
    image -= (0.32 + lung_darkness) * lungs
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (yy * 11 + 1.5 * (xx - 0.5) ** 2 * 4 + jitter[4]))
    image += 0.07 * lungs * ribs ** 3
    heart = _ellipse(yy, xx, 0.62, 0.53 + jitter[5], 0.15 * heart_scale, 0.12 * heart_scale)
    image += 0.35 * np.clip(1.0 - heart, 0, 1) ** 0.5
    spine = np.exp(-(((xx - 0.5) / 0.035) ** 2)) * (yy > 0.1)
    image += 0.25 * spine
    image += 0.3 * np.clip((yy - 0.78) / 0.12, 0, 1) * np.clip(1.2 - body, 0, 1)
    # Low-frequency exposure variation plus quantum noise.
    image += cv2.resize(rng.normal(0, 0.03, (6, 6)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 0.015, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def draw_opacity(image: np.ndarray, box, *, strength: float, sharpness: float, texture: float,
                 rng: np.random.Generator) -> None:
    """Add an opacity strictly inside the XYXY_PX ``box`` (in place): a bump inside its inscribed ellipse."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c0, r0 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
    c1, r1 = min(int(np.ceil(x2)), image.shape[1]), min(int(np.ceil(y2)), image.shape[0])
    if c1 <= c0 or r1 <= r0:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    d = _ellipse(yy, xx, (y1 + y2) / 2, (x1 + x2) / 2, max((y2 - y1) / 2, 1e-3), max((x2 - x1) / 2, 1e-3))
    bump = np.clip(1.0 - d, 0.0, 1.0) ** (1.0 / sharpness)
    if texture > 0:
        grain = rng.normal(0, 1, (max(2, (r1 - r0) // 8), max(2, (c1 - c0) // 8))).astype(np.float32)
        grain = cv2.resize(grain, (c1 - c0, r1 - r0), interpolation=cv2.INTER_LINEAR)
        bump *= np.clip(1.0 + texture * grain, 0.0, 2.0)
    image[r0:r1, c0:c1] = np.clip(image[r0:r1, c0:c1] + strength * bump, 0.0, 1.0)


# Opacity pattern per study class: box count, size (fraction of the lung), place, strength.
_CLASS_PATTERNS = {
    "typical": dict(counts=(2, 3), size=(0.16, 0.24), rows=(0.45, 0.68), peripheral=True,
                    strength=(0.22, 0.30), sharpness=1.0, texture=0.6),
    "indeterminate": dict(counts=(1, 2), size=(0.12, 0.18), rows=(0.25, 0.5), peripheral=False,
                          strength=(0.25, 0.35), sharpness=1.5, texture=0.2),
    "atypical": dict(counts=(1, 1), size=(0.07, 0.11), rows=(0.22, 0.4), peripheral=False,
                     strength=(0.45, 0.6), sharpness=4.0, texture=0.0),
}


def opacity_boxes(rng: np.random.Generator, study_class: str, height: int, width: int) -> np.ndarray:
    """XYXY_PX boxes for an image of a positive study, placed in the lung fields by class pattern."""
    pattern = _CLASS_PATTERNS[study_class]
    count = int(rng.integers(pattern["counts"][0], pattern["counts"][1] + 1))
    sides = rng.permutation([0.31, 0.69]).tolist() * 2
    boxes = []
    for k in range(count):
        cx = sides[k]
        if pattern["peripheral"]:
            cx += -0.06 if cx < 0.5 else 0.06
        cx += rng.normal(0, 0.02)
        cy = rng.uniform(*pattern["rows"])
        size = rng.uniform(*pattern["size"])
        bw, bh = size * width * rng.uniform(0.9, 1.2), size * height * rng.uniform(1.0, 1.6)
        x1, y1 = np.clip(cx * width - bw / 2, 1, width - 2), np.clip(cy * height - bh / 2, 1, height - 2)
        x2, y2 = np.clip(x1 + bw, x1 + 1, width - 1), np.clip(y1 + bh, y1 + 1, height - 1)
        boxes.append([x1, y1, x2, y2])
    return as_boxes(boxes)


def draw_class_opacities(image: np.ndarray, boxes, study_class: str, rng: np.random.Generator) -> None:
    """Draw every box's opacity (in place) with the class's pattern."""
    pattern = _CLASS_PATTERNS[study_class]
    for box in as_boxes(boxes):
        draw_opacity(image, box, strength=rng.uniform(*pattern["strength"]), sharpness=pattern["sharpness"],
                     texture=pattern["texture"], rng=rng)
