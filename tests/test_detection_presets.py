"""Detector augmentations: boxes move with the image. After every augmentation of the Faster R-CNN
preset the box still covers the drawn opacity, flips map boxes exactly, cutouts leave boxes alone,
and boxes that degenerate are dropped by the one shared helper."""

from __future__ import annotations

import copy

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from utils.data.boxes import hflip_xyxy, keep_valid_boxes
from utils.data.datasets import DetectionDataset
from utils.data.presets import DETECTION_PRESETS, CircularCutout, build_transform

SIZE = 96
BOX = np.array([[20.0, 30.0, 50.0, 70.0]])  # XYXY_PX of the drawn opacity


def _image_with_opacity(box=BOX[0], size=SIZE) -> np.ndarray:
    image = np.full((size, size), 40, dtype=np.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    image[y1:y2, x1:x2] = 230
    return np.repeat(image[..., None], 3, axis=2)


def _opacity_extent(tensor: torch.Tensor) -> np.ndarray:
    """XYXY_PX extent of the bright pixels of an output image in [0, 1] (half way between the levels)."""
    gray = tensor[0].numpy()
    ys, xs = np.nonzero(gray > (40 + 230) / 2 / 255)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


def _single_transforms(name: str):
    """Each augmentation of a preset on its own, forced to apply (OneOf's children one by one)."""
    compose = build_transform(name, SIZE)
    for transform in compose.transforms:
        children = transform.transforms if isinstance(transform, A.OneOf) else [transform]
        for child in children:
            if type(child).__name__ in ("Resize", "ToFloat", "ToTensorV2"):
                continue
            forced = copy.deepcopy(child)
            forced.p = 1.0
            yield type(child).__name__, forced


def _run(transform, seed: int, image=None, boxes=BOX):
    pipeline = A.Compose([transform, A.ToFloat(max_value=255.0), ToTensorV2()],
                         bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True), strict=True)
    pipeline.set_random_seed(seed)
    image = _image_with_opacity() if image is None else image
    return pipeline(image=image, bboxes=boxes, labels=np.ones(len(boxes), dtype=np.int64))


AUGMENTATIONS = list(_single_transforms("frcnn_train"))


def test_the_report_augmentations_are_all_there():
    names = [name for name, _ in AUGMENTATIONS]
    assert names == ["HorizontalFlip", "Affine", "Sharpen", "Blur", "RandomBrightnessContrast", "CircularCutout"]
    compose = build_transform("frcnn_train", SIZE)
    assert compose._strict
    probabilities = {type(t).__name__: t.p for t in compose.transforms}
    assert probabilities["HorizontalFlip"] == 0.3 and probabilities["Affine"] == 0.3
    assert probabilities["RandomBrightnessContrast"] == 0.3 and probabilities["CircularCutout"] == 0.3
    one_of = next(t for t in compose.transforms if isinstance(t, A.OneOf))
    # OneOf picks a child in proportion to its p: sharpen 0.75 * 2/3 = 0.5, blur 0.75 * 1/3 = 0.25.
    assert one_of.p * np.array(one_of.transforms_ps) == pytest.approx([0.5, 0.25])


@pytest.mark.parametrize("name,transform", AUGMENTATIONS, ids=[n for n, _ in AUGMENTATIONS])
def test_after_each_augmentation_the_box_still_covers_the_opacity(name, transform):
    for seed in range(8):
        out = _run(transform, seed)
        assert len(out["bboxes"]) == 1, (name, seed)
        box = np.asarray(out["bboxes"][0])
        if name == "CircularCutout":
            assert box == pytest.approx(BOX[0])  # image only
            continue
        extent = _opacity_extent(out["image"])
        tolerance = 1.5  # interpolation at the opacity's edges
        assert box[0] <= extent[0] + tolerance and box[1] <= extent[1] + tolerance, (name, seed, box, extent)
        assert box[2] >= extent[2] - tolerance and box[3] >= extent[3] - tolerance, (name, seed, box, extent)


def test_the_whole_pipeline_keeps_the_box_on_the_opacity_for_many_seeds():
    transform = build_transform("frcnn_train", SIZE)
    for seed in range(40):
        transform.set_random_seed(seed)
        out = transform(image=_image_with_opacity(), bboxes=BOX, labels=np.ones(1, dtype=np.int64))
        assert out["image"].dtype == torch.float32 and 0.0 <= out["image"].min() and out["image"].max() <= 1.0
        box = np.asarray(out["bboxes"][0])
        extent = _opacity_extent(out["image"])
        overlap = np.minimum(box[2:], extent[2:]) - np.maximum(box[:2], extent[:2])
        assert (overlap > 0).all(), (seed, box, extent)


def test_horizontal_flip_maps_boxes_exactly():
    out = _run(A.HorizontalFlip(p=1.0), 0)
    assert np.asarray(out["bboxes"]) == pytest.approx(hflip_xyxy(BOX, SIZE))
    assert _opacity_extent(out["image"]) == pytest.approx(hflip_xyxy(BOX, SIZE)[0])


def test_circular_cutout_is_seeded_and_bounded():
    cutout = CircularCutout(max_holes=6, p=1.0)
    first = _run(cutout, 5)["image"]
    assert torch.equal(first, _run(cutout, 5)["image"])
    assert not torch.equal(first, _run(cutout, 6)["image"])
    blank = np.full((SIZE, SIZE, 3), 200, dtype=np.uint8)
    for seed in range(10):
        holes = _run(cutout, seed, image=blank, boxes=np.zeros((0, 4)))["image"][0].numpy() < 0.5
        n_holes, _ = cv2.connectedComponents(holes.astype(np.uint8))
        assert 1 <= n_holes - 1 <= 6  # overlapping discs merge, so at most 6 components
    with pytest.raises(ValueError, match="max_holes"):
        CircularCutout(max_holes=0)


@pytest.mark.parametrize("name", DETECTION_PRESETS)
def test_detection_presets_give_unit_tensors_of_the_asked_size(name):
    out = build_transform(name, 64)(image=_image_with_opacity(), bboxes=BOX, labels=np.ones(1, dtype=np.int64))
    assert out["image"].shape == (3, 64, 64)
    assert np.asarray(out["bboxes"]).max() <= 64


def test_keep_valid_boxes_clips_and_drops_degenerate_boxes():
    boxes = [[-10, 5, 30, 40], [95, 10, 120, 20], [10, 10, 10.5, 30], [0, 0, 96, 96]]
    kept, mask = keep_valid_boxes(boxes, 96, 96, min_size=1.0)
    assert mask.tolist() == [True, False, False, True]
    assert kept.tolist() == [[0, 5, 30, 40], [0, 0, 96, 96]]


def test_detection_dataset_targets(tmp_path):
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), _image_with_opacity(size=200)[..., 0])
    boxes_norm = [BOX / 200.0, np.zeros((0, 4)), [[0.5, 0.5, 0.5, 0.9]]]  # a box, a negative, a degenerate box
    data = DetectionDataset([path] * 3, boxes_norm, build_transform("detector_eval", 100), seed=0)
    image, target, index = data[0]
    assert image.shape == (3, 100, 100) and index == 0
    assert target["boxes"].numpy() == pytest.approx(BOX / 2.0, abs=1e-4)
    assert target["labels"].tolist() == [1]
    for k in (1, 2):  # negatives and degenerate boxes both give empty targets of the right shape
        _, target, _ = data[k]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert DetectionDataset([tmp_path / "missing.png"], [BOX], build_transform("detector_eval", 64))[0] is None
