"""Augmentation presets: shapes, normalisation, strictness, and seeded determinism per item and epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.data.datasets import ImageDataset, item_seed
from utils.data.presets import DETECTION_PRESETS, PRESETS, build_transform

CLASSIFIER_PRESETS = sorted(set(PRESETS) - set(DETECTION_PRESETS))


def _image(height=120, width=100):
    ramp = np.linspace(0, 255, height * width).reshape(height, width).astype(np.uint8)
    return np.repeat(ramp[..., None], 3, axis=2)


@pytest.mark.parametrize("name", CLASSIFIER_PRESETS)
def test_every_classifier_preset_gives_a_normalised_square_tensor_and_is_strict(name):
    transform = build_transform(name, 64, 72)
    assert transform._strict
    out = transform(image=_image())["image"]
    assert isinstance(out, torch.Tensor) and out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert -2.2 < out.min() and out.max() < 2.7  # ImageNet statistics applied to [0, 1] pixels


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown augmentation preset 'nih_strong'.*nih_train"):
        build_transform("nih_strong", 64, 72)


def test_eval_preset_is_the_centre_crop_of_the_shorter_side_resize():
    out = build_transform("nih_eval", 64, 64)(image=_image(128, 64))["image"]
    assert out.shape == (3, 64, 64)


def test_item_augmentations_repeat_for_the_same_epoch_and_change_with_the_epoch(tmp_path):
    import cv2

    path = tmp_path / "x.png"
    cv2.imwrite(str(path), _image()[..., 0])
    data = ImageDataset([path] * 4, [np.zeros(2)] * 4, build_transform("nih_train", 64, 72), seed=3)
    first = [data[i][0] for i in range(4)]
    assert all(torch.equal(a, data[i][0]) for i, a in enumerate(first))
    data.set_epoch(1)
    assert not all(torch.equal(a, data[i][0]) for i, a in enumerate(first))
    assert item_seed(3, 0, 1) != item_seed(3, 1, 0)
