"""Weighted boxes fusion through utils.ensemble.fusion: hand-computed results and the input checks that keep
ensemble-boxes from calling exit()."""

import numpy as np
import pytest

from utils.data.boxes import hflip_xyxy
from utils.ensemble.fusion import FusionInputError, blend_none, check_box_lists, fuse_boxes

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
    """The predictor's fusion processes (spawned) return what combining in the caller returns, and a bad
    input's error reaches the caller the same way."""
    from utils.ensemble.config import EnsembleConfig
    from utils.ensemble.fusion import MemberOutputs, combine_images, fusion_pool

    shifted = BOX + 0.01
    outputs = [MemberOutputs({"a": [(BOX, np.array([0.8])), (shifted, np.array([0.6]))]}), MemberOutputs(),
               MemberOutputs({"a": [(BOX, np.array([0.3]))], "b": [(shifted, np.array([0.5]))]})]
    config = EnsembleConfig()
    bad = [MemberOutputs({"a": [(BOX, np.array([np.nan]))]})]
    for workers in (0, 1):
        with fusion_pool(workers) as pool:
            fused = pool.submit(combine_images, outputs, config).result()
            with pytest.raises(FusionInputError, match="scores must be finite"):
                pool.submit(combine_images, bad, config).result()
        for found, expected in zip(fused, combine_images(outputs, config)):
            np.testing.assert_allclose(found.boxes, expected.boxes)
            np.testing.assert_allclose(found.scores, expected.scores)
    assert [len(f.scores) for f in fused] == [1, 0, 1]


def test_combining_folds_and_flips_first_then_the_detectors():
    """A detector's folds and flips are fused among themselves with equal weights before the detectors
    are fused with their model weights, so a model's weight does not depend on how many sources it has."""
    from utils.ensemble.config import EnsembleConfig
    from utils.ensemble.fusion import MemberOutputs, combine_image

    config = EnsembleConfig(wbf_skip_box_thr=0.0)
    four_sources = MemberOutputs({"a": [(BOX, np.array([0.8]))] * 4, "b": [(BOX, np.array([0.4]))]})
    one_source = MemberOutputs({"a": [(BOX, np.array([0.8]))], "b": [(BOX, np.array([0.4]))]})
    for outputs in (four_sources, one_source):
        found = combine_image(outputs, config)
        np.testing.assert_allclose(found.scores, [0.6])  # (0.8 + 0.4) / 2 either way
    # Weight 0 leaves a detector out: the other one passes through unfused, power applied.
    found = combine_image(one_source, EnsembleConfig(model_weights={"b": 0.0}, score_powers={"a": 2.0}))
    np.testing.assert_allclose(found.scores, [0.64])
    np.testing.assert_allclose(found.boxes, BOX)


def test_combined_classifiers_are_weighted_and_boxes_rescored_by_their_none():
    from utils.ensemble.config import EnsembleConfig
    from utils.ensemble.fusion import MemberOutputs, combine_image

    study = np.array([0.1, 0.6, 0.2, 0.1])
    outputs = MemberOutputs({"a": [(BOX, np.array([0.8]))]},
                            {"c1": (study, 0.2), "c2": (np.array([0.7, 0.1, 0.1, 0.1]), 0.8)})
    found = combine_image(outputs, EnsembleConfig(model_weights={"c2": 3.0}, box_none_power=1.0))
    np.testing.assert_allclose(found.study_probs, (study + 3 * np.array([0.7, 0.1, 0.1, 0.1])) / 4)
    assert found.none_prob == pytest.approx((0.2 + 3 * 0.8) / 4)
    np.testing.assert_allclose(found.scores, [0.8 * (1 - found.none_prob)])
    alone = combine_image(outputs, EnsembleConfig(model_weights={"c2": 0.0}))
    np.testing.assert_allclose(alone.study_probs, study)
    np.testing.assert_allclose(alone.scores, [0.8])  # box_none_power 0: scores as fused


def test_fusion_workers_default_to_none_on_the_cpu_and_some_beside_a_gpu():
    from utils.core.config import from_mapping
    from utils.ensemble.config import EnsembleConfig
    from utils.ensemble.fusion import resolve_fusion_workers

    assert resolve_fusion_workers(EnsembleConfig(), "cpu") == 0
    assert 1 <= resolve_fusion_workers(EnsembleConfig(), "cuda") <= 4
    assert resolve_fusion_workers(EnsembleConfig(fusion_workers=3), "cpu") == 3
    with pytest.raises(ValueError, match="fusion_workers: must be greater than or equal to 0"):
        from_mapping(EnsembleConfig, {"fusion_workers": -1}, "manifest.json [ensemble]")
