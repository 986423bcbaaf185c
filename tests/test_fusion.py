"""Weighted boxes fusion through utils.fusion: hand-computed results and the input checks that keep
ensemble-boxes from calling exit()."""

import numpy as np
import pytest

from utils.boxes import hflip_xyxy
from utils.fusion import FusionInputError, blend_none, check_box_lists, fuse_boxes

BOX = np.array([[0.10, 0.20, 0.40, 0.60]])


def test_a_box_and_its_flipped_twin_fuse_back_to_the_box():
    mirror_prediction = hflip_xyxy(BOX, 1.0)  # what a detector finds on the mirror image
    boxes, scores = fuse_boxes([BOX, hflip_xyxy(mirror_prediction, 1.0)], [[0.8], [0.6]])
    np.testing.assert_allclose(boxes, BOX, atol=1e-12)
    np.testing.assert_allclose(scores, [0.7])  # avg: both sources found it


def test_overlapping_boxes_fuse_to_the_score_weighted_mean():
    a, b = np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([[0.12, 0.1, 0.52, 0.5]])
    boxes, scores = fuse_boxes([a, b], [[0.9], [0.6]], iou_thr=0.5)
    np.testing.assert_allclose(boxes, (0.9 * a + 0.6 * b) / 1.5, atol=1e-12)
    np.testing.assert_allclose(scores, [0.75])


def test_source_weights_and_a_box_only_one_source_found():
    a, far = np.array([[0.1, 0.1, 0.3, 0.3]]), np.array([[0.6, 0.6, 0.9, 0.9]])
    boxes, scores = fuse_boxes([a, far], [[0.8], [0.5]], weights=[3.0, 1.0])
    # avg: each cluster's weighted score mean, times (its sources' weight / all weights)
    np.testing.assert_allclose(scores, [0.8 * 3 / 4, 0.5 * 1 / 4])
    np.testing.assert_allclose(boxes, np.vstack([a, far]), atol=1e-12)


def test_output_is_sorted_capped_and_empty_inputs_give_nothing():
    many = np.array([[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6], [0.8, 0.8, 0.9, 0.9]])
    boxes, scores = fuse_boxes([many], [[0.2, 0.9, 0.5]], max_boxes=2)
    np.testing.assert_allclose(scores, [0.9, 0.5])
    np.testing.assert_allclose(boxes, many[[1, 2]])
    boxes, scores = fuse_boxes([np.zeros((0, 4)), []], [[], []])
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize("boxes, scores, weights, message", [
    ([BOX, BOX], [[0.5]], None, "2 box lists but 1 score lists"),
    ([BOX], [[0.5, 0.4]], None, "1 boxes but 2 scores"),
    ([np.zeros((2, 3))], [[0.5, 0.5]], None, "shape"),
    ([np.array([[0.1, np.nan, 0.2, 0.3]])], [[0.5]], None, "non-finite"),
    ([BOX], [[np.inf]], None, "scores must be finite"),
    ([BOX], [[1.5]], None, "within \\[0, 1\\]"),
    ([BOX * 512], [[0.5]], None, "not XYXY_NORM"),
    ([BOX, BOX], [[0.5], [0.5]], [1.0], "1 weights for 2"),
    ([BOX], [[0.5]], [-1.0], "non-negative"),
])
def test_bad_inputs_raise_instead_of_exiting(boxes, scores, weights, message):
    with pytest.raises(FusionInputError, match=message):
        fuse_boxes(boxes, scores, weights)


def test_bad_settings_raise():
    with pytest.raises(FusionInputError, match="conf_type"):
        fuse_boxes([BOX], [[0.5]], conf_type="mean")
    with pytest.raises(FusionInputError, match="iou_thr"):
        fuse_boxes([BOX], [[0.5]], iou_thr=0.0)


def test_rounding_outside_the_range_is_clipped_and_degenerate_boxes_dropped():
    boxes, scores, _ = check_box_lists([np.array([[-1e-4, 0.2, 1.0004, 0.5], [0.3, 0.3, 0.3, 0.6]])], [[0.7, 0.9]])
    np.testing.assert_allclose(boxes[0], [[0.0, 0.2, 1.0, 0.5]])
    np.testing.assert_allclose(scores[0], [0.7])


def test_none_blend_is_the_weighted_mean_of_the_available_signals():
    assert blend_none([0.2, 0.6, 0.9], [1.0, 1.0, 2.0]) == pytest.approx((0.2 + 0.6 + 1.8) / 4)
    assert blend_none([0.2, None, 0.9], [1.0, 1.0, 1.0]) == pytest.approx(0.55)
    assert blend_none([0.2, 0.6, 0.9], [0.0, 1.0, 0.0]) == pytest.approx(0.6)
    assert blend_none([None, None, 0.9], [1.0, 1.0, 0.0]) is None
    with pytest.raises(ValueError, match="non-negative"):
        blend_none([0.2], [-1.0])


def test_fusion_processes_give_the_callers_results_and_errors():
    """The predictor's fusion processes (spawned) return what fusing in the caller returns, and a bad
    input's error reaches the caller the same way."""
    from utils.fusion import EnsembleConfig, fuse_images, fusion_pool

    shifted = BOX + 0.01
    sources = [[(BOX, np.array([0.8])), (shifted, np.array([0.6]))], [], [(BOX, np.array([0.3]))]]
    weights = [[1.0, 1.0], [], [2.0]]
    config = EnsembleConfig()
    bad = [[(BOX, np.array([np.nan]))]]
    for workers in (0, 1):
        with fusion_pool(workers) as pool:
            fused = pool.submit(fuse_images, sources, weights, config).result()
            with pytest.raises(FusionInputError, match="scores must be finite"):
                pool.submit(fuse_images, bad, [[1.0]], config).result()
        for (boxes, scores), expected in zip(fused, fuse_images(sources, weights, config)):
            np.testing.assert_allclose(boxes, expected[0])
            np.testing.assert_allclose(scores, expected[1])
    assert len(fused[0][1]) == 1 and len(fused[1][1]) == 0


def test_fusion_workers_default_to_none_on_the_cpu_and_some_beside_a_gpu():
    from utils.fusion import EnsembleConfig, resolve_fusion_workers

    assert resolve_fusion_workers(EnsembleConfig(), "cpu") == 0
    assert 1 <= resolve_fusion_workers(EnsembleConfig(), "cuda") <= 4
    assert resolve_fusion_workers(EnsembleConfig(fusion_workers=3), "cpu") == 3
    with pytest.raises(ValueError, match="fusion_workers"):
        EnsembleConfig(fusion_workers=-1)
