import numpy as np
import pytest
from conftest import cxcywh_to_xyxy_norm

from utils.data import boxes as B


def test_kaggle_xywh_round_trip():
    xywh = [[789.28836, 582.43035, 1026.65662, 1917.30292]]
    xyxy = B.kaggle_xywh_to_xyxy(xywh)
    np.testing.assert_allclose(xyxy, [[789.28836, 582.43035, 1815.94498, 2499.73327]])
    np.testing.assert_allclose(B.xyxy_to_kaggle_xywh(xyxy), xywh)


def test_normalise_and_yolo_round_trip():
    xyxy = np.array([[10, 20, 110, 220], [0, 0, 400, 300]], float)
    norm = B.normalize_xyxy(xyxy, 400, 300)
    np.testing.assert_allclose(norm[1], [0, 0, 1, 1])
    yolo = B.xyxy_norm_to_cxcywh(norm)
    np.testing.assert_allclose(yolo[0], [60 / 400, 120 / 300, 100 / 400, 200 / 300])
    np.testing.assert_allclose(cxcywh_to_xyxy_norm(yolo), norm)
    np.testing.assert_allclose(B.denormalize_xyxy(norm, 400, 300), xyxy)


def test_hflip_is_exact_and_involutive():
    box = np.array([[10.5, 3, 40.25, 9]])
    flipped = B.hflip_xyxy(box, 100)
    np.testing.assert_allclose(flipped, [[59.75, 3, 89.5, 9]])
    np.testing.assert_array_equal(B.hflip_xyxy(flipped, 100), box)


def test_clip_and_valid_mask_drop_degenerate_boxes():
    clipped = B.clip_xyxy([[-5, -5, 10, 10], [120, 5, 150, 9], [5, 5, 5, 9]], 100, 100)
    np.testing.assert_allclose(clipped[0], [0, 0, 10, 10])
    assert B.valid_box_mask(clipped).tolist() == [True, False, False]
    assert B.valid_box_mask([[0, 0, np.nan, 1]]).tolist() == [False]


def test_iou_matrix_hand_values():
    iou = B.iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0, 0.0]])


def test_empty_and_bad_shapes():
    assert B.as_boxes([]).shape == (0, 4)
    assert B.kaggle_xywh_to_xyxy([]).shape == (0, 4)
    with pytest.raises(ValueError):
        B.as_boxes([[1, 2, 3]])
