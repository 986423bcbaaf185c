"""Detector evaluation (opacity AP through the competition metric, the fixed-box baseline), the
detection collate, and the RSNA Pneumonia preparation used for pre-training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from utils.data.boxes import normalize_xyxy
from utils.data.labels import boxes_from_json
from utils.data.predictions import detection_rows
from utils.data.prepare import RSNA_LABELS, load_rsna_boxes, prepare_rsna
from utils.data.synthetic import make_rsna_dataset
from utils.data.training_table import fold_split
from utils.scoring.detection import box_submission, detector_scores, fixed_box_predictions, read_detection_table
from utils.training.loaders import collate_detection


def _table():
    return pd.DataFrame({
        "image_id": ["a", "b", "c"], "study_id": ["s1", "s2", "s3"], "original_width": [200, 400, 300],
        "original_height": [100, 400, 300], "study_class": ["typical", "negative", "atypical"],
        "boxes": ["[[20, 10, 60, 50]]", "[]", "[[0, 0, 30, 30], [100, 100, 200, 250]]"],
        "n_boxes": [1, 0, 2], "used": [True, True, True], "fold": [0, 0, 1]})


def _perfect_predictions(table):
    detections = [(normalize_xyxy(boxes_from_json(b), w, h), np.full(len(boxes_from_json(b)), 0.9))
                  for b, w, h in zip(table["boxes"], table["original_width"], table["original_height"])]
    return detection_rows(table["image_id"], table["study_id"], "m", 0, detections)


def test_perfect_boxes_score_one_and_none_zero():
    table = _table()
    scores = detector_scores(_perfect_predictions(table), table)
    assert scores["opacity_ap"] == pytest.approx(1.0)
    assert scores["n_truth_boxes"] == 3 and scores["n_predicted_boxes"] == 3
    assert detector_scores(_perfect_predictions(table).iloc[:0], table)["opacity_ap"] == 0.0


def test_box_submission_maps_back_to_each_images_own_pixels():
    table = _table()
    submission = box_submission(_perfect_predictions(table), table).set_index("id")["PredictionString"]
    assert submission["a_image"] == "opacity 0.9 20 10 60 50"
    assert submission["b_image"] == ""  # no box predicted: nothing (the detector has no none class)
    assert submission["c_image"].split()[8:] == ["100", "100", "200", "250"]


def test_fixed_box_baseline_is_scored_on_the_same_images():
    table = _table()
    assert len(fixed_box_predictions(table)) == 2 * len(table)
    # No lung box overlaps a truth box of this table by IoU 0.5 (at most 0.21): AP 0.
    assert detector_scores(_perfect_predictions(table), table)["baseline_fixed_boxes_ap"] == 0.0
    # An image "d" whose box is exactly the left lung box: the 8 tied boxes are ranked by id, so its hit
    # comes 7th, at recall 1/4 of the four truth boxes: AP = 1/4 * 1/7.
    d = pd.DataFrame({"image_id": ["d"], "study_id": ["s4"], "original_width": [100], "original_height": [100],
                      "study_class": ["typical"], "boxes": ["[[18, 30, 45, 75]]"], "n_boxes": [1], "used": [True],
                      "fold": [0]})
    scores = detector_scores(_perfect_predictions(pd.concat([table, d], ignore_index=True)),
                             pd.concat([table, d], ignore_index=True))
    assert scores["baseline_fixed_boxes_ap"] == pytest.approx(1 / 28)
    assert scores["opacity_ap"] == pytest.approx(1.0)


def test_unused_images_are_not_scored():
    table = _table()
    table.loc[2, "used"] = False  # an un-annotated duplicate: its (absent) boxes are not the truth
    assert detector_scores(_perfect_predictions(table), table)["n_truth_boxes"] == 1


def test_fold_split_and_its_error():
    table = _table()
    train, val, held_out = fold_split(table, 0, "meta.csv")
    assert list(train["image_id"]) == ["c"] and list(val["image_id"]) == ["a", "b"]
    assert list(held_out["image_id"]) == ["a", "b"]
    table["used"] = [True, True, False]
    with pytest.raises(ValueError, match="meta.csv: fold 0 leaves 0 training and 2 validation images"):
        fold_split(table, 0, "meta.csv")


def test_collate_detection_keeps_lists_and_drops_unreadable_items():
    item = (torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}, 4)
    images, targets, indices = collate_detection([item, None, item])
    assert isinstance(images, list) and len(images) == 2 and len(targets) == 2
    assert indices.tolist() == [4, 4]
    assert collate_detection([None]) is None


def test_prepare_rsna_gives_the_competition_columns(tmp_path):
    make_rsna_dataset(tmp_path / "rsna", n_images=12, seed=4, image_size=64, progress=False)
    labels = pd.read_csv(tmp_path / "rsna" / RSNA_LABELS)
    table = prepare_rsna(tmp_path / "rsna", tmp_path / "prepared", sizes=(32,), n_folds=3, progress=False)
    assert len(table) == labels["patientId"].nunique() == 12
    expected = labels[labels["Target"] == 1].groupby("patientId").size()
    assert table.set_index("image_id")["n_boxes"].to_dict() == {p: int(expected.get(p, 0)) for p in table["image_id"]}
    assert set(table["fold"]) == {0, 1, 2} and table["used"].all()
    loaded = read_detection_table(tmp_path / "prepared" / "meta.csv", 32, 32)
    assert all(p.is_file() for p in loaded["image_path"])
    positive = loaded[loaded["n_boxes"] > 0].iloc[0]
    assert (positive["boxes_norm"] > 0).all() and (positive["boxes_norm"] < 1).all()


def test_rsna_labels_with_a_positive_row_without_a_box_are_refused(tmp_path):
    path = tmp_path / RSNA_LABELS
    path.write_text("patientId,x,y,width,height,Target\np1,,,,,0\np2,,,,,1\n")
    with pytest.raises(ValueError, match="stage_2_train_labels.csv: patient p2 has Target 1 without a box"):
        load_rsna_boxes(path)
    path.write_text("patientId,x,y,Target\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_rsna_boxes(path)
