"""Pseudo-labels: the selection rules on constructed predictions (hard and soft), the thresholds, the
marker keeping the rows out of validation and of every score, soft targets through the study loss, the
refusal of overlapping folders, and the stage end to end at a tiny size (round one's weights label the
synthetic test DICOMs, round two trains on them, its scores are on real labels only)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import LEARNING, REPO, TINY_TRAIN_ALL

from train import pseudo_label, train_all
from utils.core.config import from_mapping
from utils.data.predictions import read_predictions
from utils.data.pseudo_label_rules import (
    PseudoConfig,
    PseudoLabelError,
    Thresholds,
    check_disjoint,
    merge_meta,
    pseudo_rows,
    resolve_thresholds,
    select_labels,
)
from utils.data.training_table import PSEUDO_FOLD, fold_split, read_meta, select_folds
from utils.ensemble.manifest import read_manifest
from utils.kinds.registry import KINDS
from utils.kinds.study.network import StudyClassifier
from utils.kinds.study.training import load_study_table
from utils.pipeline import train_all as pipeline
from utils.scoring.metric import ClassDetections, lowest_threshold_at_precision

THRESHOLDS = Thresholds(none=0.6, box=0.3)
BOX = [0.1, 0.2, 0.4, 0.6]


def constructed_targets() -> pd.DataFrame:
    """Three images as the ensemble would describe them: a confident none, confident boxes, neither."""
    return pd.DataFrame({
        "image_id": ["none_image", "boxed_image", "unsure_image"],
        "study_id": ["s1", "s2", "s3"],
        "original_height": [200, 300, 100], "original_width": [100, 150, 100],
        # the submission's study probabilities (negative blended, so not summing to one)
        "study_probs": [np.array([0.9, 0.1, 0.2, 0.0]), np.array([0.1, 0.5, 0.3, 0.1]), np.array([0.3, 0.3, 0.2, 0.2])],
        "none_prob": [0.8, 0.2, 0.5],
        "boxes": [np.array([BOX]), np.array([BOX, [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.3, 0.3]]),
                  np.array([BOX])],
        "scores": [np.array([0.7]), np.array([0.4, 0.9, 0.35, 0.1]), np.array([0.25])],
    })


def test_soft_selection_keeps_the_ensembles_probabilities_and_confident_boxes_only():
    selected = select_labels(constructed_targets(), THRESHOLDS, PseudoConfig(max_boxes=2)).set_index("image_id")
    # A confident none: no box even though a box scored 0.7; a label for the detectors (a negative).
    assert len(selected.loc["none_image", "label_boxes"]) == 0 and selected.loc["none_image", "boxes_known"]
    # Otherwise the boxes above 0.3, best first, at most max_boxes (0.35 is the third: dropped).
    np.testing.assert_allclose(selected.loc["boxed_image", "label_boxes"], [[0.5, 0.5, 0.9, 0.9], BOX])
    # Neither confidently none nor a confident box: no label for the detectors.
    assert not selected.loc["unsure_image", "boxes_known"] and len(selected.loc["unsure_image", "label_boxes"]) == 0
    # Soft study targets: the ensemble's probabilities normalised; soft none: its none probability.
    np.testing.assert_allclose(selected.loc["none_image", "study_target"], np.array([0.9, 0.1, 0.2, 0.0]) / 1.2)
    assert selected["none_target"].tolist() == [0.8, 0.2, 0.5]
    unlimited = select_labels(constructed_targets(), THRESHOLDS, PseudoConfig()).set_index("image_id")
    assert len(unlimited.loc["boxed_image", "label_boxes"]) == 3


def test_hard_selection_gives_one_hot_study_and_thresholded_none():
    selected = select_labels(constructed_targets(), THRESHOLDS, PseudoConfig(study_targets="hard"))
    np.testing.assert_array_equal(np.stack(selected["study_target"]), np.eye(4)[[0, 1, 0]])
    assert selected["none_target"].tolist() == [1.0, 0.0, 0.0]


def test_thresholds_come_from_the_config_or_out_of_fold():
    best_none = {"threshold": 0.61234, "precision": 0.9, "recall": 0.4}
    best_box = {"threshold": 0.1, "precision": 0.5, "recall": 0.3}
    chosen = resolve_thresholds(PseudoConfig(box_threshold=0.2), best_none, best_box)
    assert (chosen.none, chosen.box, chosen.box_source) == (0.6123, 0.2, "config")
    assert chosen.none_source == "out of fold (lowest with precision >= 0.85: precision 0.900, recall 0.400)"
    assert resolve_thresholds(PseudoConfig(), best_none, best_box).box_source.startswith("out of fold (F1-best")
    with pytest.raises(PseudoLabelError, match="none_threshold is null"):
        resolve_thresholds(PseudoConfig(), None, best_box)


def test_the_precision_rule_keeps_the_most_labels_that_stay_that_precise():
    """Seven images ranked by none probability, truly none: yes yes no yes no no yes. Cumulative
    precision 1, 1, 2/3, 3/4, 3/5, 1/2, 4/7: at least 0.75 down to the fourth (0.6), 0.6 down to the
    fifth (0.5); without any truth there is no threshold."""
    whole = (0.0, 0.0, 1.0, 1.0)
    truth = [True, True, False, True, False, False, True]
    confidences = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    detections = ClassDetections(truths={f"i{k}": np.array([whole]) for k, t in enumerate(truth) if t},
                                 predictions=[(c, f"i{k}", whole) for k, c in enumerate(confidences)])
    assert lowest_threshold_at_precision(detections, 0.75) == {"threshold": 0.6, "precision": 0.75, "recall": 0.75}
    assert lowest_threshold_at_precision(detections, 0.6)["threshold"] == 0.5
    assert lowest_threshold_at_precision(ClassDetections({}, detections.predictions), 0.5) is None
    with pytest.raises(ValueError, match="max_boxes: must be greater than or equal to 1"):
        from_mapping(PseudoConfig, {"max_boxes": 0}, "c.yaml [pseudo]")


def merged_meta(detection_prepared, tmp_path):
    """The synthetic prepared table (3 folds) plus the constructed images pseudo-labelled by fold 0 and
    by fold 1 (each image once per fold, as the stage writes them), their PNGs borrowed from real rows."""
    real = read_meta(detection_prepared, 0)
    selected = select_labels(constructed_targets(), THRESHOLDS, PseudoConfig())
    out = tmp_path / "round2"
    borrowed = {size: [str(detection_prepared.parent / f"images_{size}" / f"{i}.png") for i in real["image_id"][:3]]
                for size in (64, 96)}
    rows = pd.concat([pseudo_rows(selected, fold, borrowed) for fold in (0, 1)], ignore_index=True)
    merge_meta(detection_prepared, rows, out / "meta.csv")
    return real, out / "meta.csv"


def test_the_marker_keeps_pseudo_rows_out_of_validation_and_every_score(detection_prepared, tmp_path):
    real, meta = merged_meta(detection_prepared, tmp_path)
    pseudo_ids = {"none_image", "boxed_image", "unsure_image"}
    # What every report, score and calibration reads: the real rows only, identical to round one's.
    scored = read_meta(meta, 0)
    assert not set(scored["image_id"]) & pseudo_ids and len(scored) == len(real)
    assert scored["image_path"].map(lambda p: p.resolve()).tolist() == real["image_path"].map(
        lambda p: p.resolve()).tolist()
    table = read_meta(meta, 64, pseudo=True)
    assert int(table["pseudo"].sum()) == 6 and set(table.loc[table["pseudo"], "fold"]) == {PSEUDO_FOLD}
    assert select_folds(table, None, meta) == [0, 1, 2]
    for fold in (0, 1, 2):
        train, val, held_out = fold_split(table, fold, meta)
        assert not set(val["image_id"]) & pseudo_ids and not set(held_out["image_id"]) & pseudo_ids
        # each fold trains on the images its own round-one models labelled, and on no other fold's labels
        assert set(train.loc[train["pseudo"], "pseudo_fold"]) == ({fold} if fold < 2 else set())
        assert int(train["pseudo"].sum()) == (3 if fold < 2 else 0)
    # Detectors skip the image whose boxes are no label; the study classifier learns its soft targets.
    detector = KINDS["frcnn"].load_table(meta, KINDS["frcnn"].config_class(image_size=64, predict_size=96))
    used = detector[detector["pseudo"]].groupby("image_id")["used"].all()
    assert used.to_dict() == {"boxed_image": True, "none_image": True, "unsure_image": False}
    study = load_study_table(meta, 64, with_boxes=True)
    targets = study.loc[study["image_id"] == "boxed_image", "targets"].iloc[0]
    np.testing.assert_allclose(targets["study_probs"], np.array([0.1, 0.5, 0.3, 0.1]))
    assert targets["none"] == 0.2 and targets["mask_valid"] == 1.0
    assert study.loc[study["image_id"] == "unsure_image", "targets"].iloc[0]["mask_valid"] == 0.0
    first_real = study.loc[~study["pseudo"], "targets"].iloc[0]
    np.testing.assert_array_equal(first_real["study_probs"], np.eye(4)[first_real["study"]])
    with pytest.raises(PseudoLabelError, match="already holds pseudo-labelled rows"):
        merge_meta(meta, pd.DataFrame(), tmp_path / "again" / "meta.csv")


def test_yolo_exports_each_folds_pseudo_label_of_an_image_apart(detection_prepared, tmp_path):
    """An image labelled by two round-one folds is two YOLO training images with their own labels."""
    from utils.kinds.yolo.fold_setup import export_yolo_images

    _, meta = merged_meta(detection_prepared, tmp_path)
    table = KINDS["yolo"].load_table(meta, KINDS["yolo"].config_class(image_size=64, predict_size=96))
    boxed = table[table["image_id"] == "boxed_image"].copy()
    boxed["boxes_norm"] = [np.array([BOX]) if f == 1 else b for f, b in zip(boxed["pseudo_fold"], boxed["boxes_norm"])]
    paths = export_yolo_images(boxed, tmp_path / "dataset")
    assert len(set(paths)) == 2
    labels = [(tmp_path / "dataset" / "labels" / f"boxed_image.pseudo{fold}.txt").read_text() for fold in (0, 1)]
    assert len(labels[0].splitlines()) == 3 and len(labels[1].splitlines()) == 1


def test_soft_targets_through_the_study_loss():
    torch.manual_seed(0)
    model = StudyClassifier("resnet18", None).eval()
    images = torch.randn(2, 3, 32, 32)
    hard = {"study": torch.tensor([0, 2]), "none": torch.tensor([1.0, 0.0])}
    one_hot = {**hard, "study_probs": torch.eye(4)[[0, 2]]}
    soft = {**hard, "study_probs": torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 0.5, 0.5, 0.0]]),
            "none": torch.tensor([0.8, 0.3])}
    with torch.no_grad():
        by_index, by_one_hot, by_soft = model(images, hard), model(images, one_hot), model(images, soft)
    assert by_one_hot["loss_study"].item() == pytest.approx(by_index["loss_study"].item(), rel=1e-6)
    log_probs = torch.log_softmax(by_soft["study_logits"], dim=1)
    expected = -(soft["study_probs"] * log_probs).sum(dim=1).mean()
    assert by_soft["loss_study"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert by_soft["loss_none"].item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        by_soft["none_logits"], soft["none"]).item(), rel=1e-5)


def test_training_images_and_training_folders_are_refused(tmp_path):
    train_dir = tmp_path / "data" / "train"
    with pytest.raises(PseudoLabelError, match="2 of the 3 images to pseudo-label are training images"):
        check_disjoint(["a", "b", "c"], ["a", "b", "x"], [], [])
    with pytest.raises(PseudoLabelError, match="lies in the training folder"):
        check_disjoint(["a"], ["x"], [train_dir / "s" / "x.dcm"], [train_dir])
    check_disjoint(["a"], ["x"], [tmp_path / "data" / "test" / "x.dcm"], [train_dir, None])


@pytest.mark.slow
def test_train_all_pseudo_labels_the_test_split_and_trains_round_two(trained_run, siim_dataset, nih_dataset,
                                                                    tmp_path):
    """Round one's weights (the shared tiny run: all three kinds) label the synthetic test DICOMs; round
    two trains the engine's kinds on real + pseudo-labelled images from the same command line; no
    pseudo-labelled id reaches any out-of-fold file or score; the stage refuses the training images."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("round2"))
    config = str(REPO / "train" / "configs" / "demo.yaml")
    code = train_all.main(["--data-dir", str(siim_dataset), "--nih-dir", str(nih_dataset), "--out", str(run),
                           "--config", config, "--no-progress", "--from-stage", "pseudo",
                           "--pseudo-images", str(siim_dataset), "--kinds", "frcnn", "study",  # YOLO: above
                           "--set", *TINY_TRAIN_ALL, *LEARNING,
                           "frcnn.epochs=1", "study.epochs=1", "pseudo.max_boxes=2", "pseudo.none_rule=f1",
                           "calibrate.enabled=false"])
    stages = json.loads((run / "train_all.json").read_text())
    assert stages["pseudo"]["exit_code"] == 0 and stages["round2"]["exit_code"] == 0 and code == 0, stages
    summary = json.loads((run / "round2" / "prepared" / "pseudo_labels.json").read_text())
    test_ids = {p.stem for p in (siim_dataset / "test").rglob("*.dcm")}
    meta = pd.read_csv(run / "round2" / "prepared" / "meta.csv", dtype={"image_id": str})
    pseudo = meta[meta["pseudo"].astype(str).str.lower() == "true"]
    assert set(pseudo["image_id"]) == test_ids and summary["rows"]["pseudo"] == len(test_ids)
    assert summary["thresholds"]["none_source"].startswith("out of fold (F1-best") and pseudo["n_boxes"].max() <= 2
    # Round two: the kinds trained again, with the same real rows held out; the trunk from round one's backbone.
    manifest = read_manifest(run / "round2" / "weights")
    assert set(manifest["models"]) == {"study", "frcnn"}
    assert str(run / "backbone" / "best.pt") == manifest["models"]["study"]["config"]["backbone"]
    for name in ("study", "frcnn"):
        oof = read_predictions(run / "round2" / name / "oof_predictions.csv")
        assert not set(oof["image_id"]) & test_ids
        assert set(oof["image_id"]) == set(read_predictions(run / name / "oof_predictions.csv")["image_id"])
    report = json.loads((run / "round2" / "report" / "cv_report.json").read_text())
    assert report["n_images"] == json.loads((run / "report" / "cv_report.json").read_text())["n_images"]
    study_rows = [line for line in (run / "round2" / "study" / "fold0" / "metrics.csv").read_text().splitlines()]
    assert len(study_rows) == 2  # one epoch trained on the merged table
    with pytest.raises(SystemExit, match="lies in the training folder"):
        pseudo_label.main(["--run-dir", str(run), "--images", str(siim_dataset), "--out", str(tmp_path / "p"),
                           "--train-dir", str(siim_dataset), "--config", config, "--no-progress"])


@pytest.mark.slow
def test_round_two_can_fine_tune_round_ones_weights_fold_by_fold(trained_run, tmp_path):
    """``pseudo.round2_start: round1``: round two's command starts each engine kind from round one's
    weights folder (no RSNA pre-training again); those weights load into the kind's model as built from
    its config; a kind that cannot start from weights (YOLO) is refused by name, not silently retrained."""
    from utils.kinds.base import RunOptions, TrainingError, fold_weights, train_folds

    (tmp_path / "T").mkdir()
    args = train_all.get_args_parser().parse_args([
        "--data-dir", "D", "--out", str(trained_run), "--config", str(REPO / "train" / "configs" / "demo.yaml"),
        "--nih-dir", "N", "--rsna-dir", "R", "--pseudo-images", str(tmp_path / "T")])
    command = pipeline.round_two_command(args, {}, PseudoConfig(round2_start="round1",
                                                                 round2_overrides=["study.epochs=2"]))
    assert command[command.index("--start-from") + 1] == str(trained_run / "weights")
    assert "--rsna-dir" not in command and command[-1] == "study.epochs=2"
    stage = pipeline.stage_commands(train_all.get_args_parser().parse_args([
        "--data-dir", "D", "--out", str(tmp_path), "--config", str(REPO / "train" / "configs" / "demo.yaml"),
        "--start-from", str(trained_run / "weights")]),
        pipeline.split_overrides([*TINY_TRAIN_ALL, *LEARNING, "study.backbone=none", "frcnn.backbone=none"]))
    assert "--start-from" in stage["study"] and "--start-from" in stage["frcnn"] and "--start-from" not in stage["yolo"]
    manifest = read_manifest(trained_run / "weights")
    for name, kind in (("study", KINDS["study"]), ("frcnn", KINDS["frcnn"])):
        spec = {**manifest["models"][name]["config"], "backbone": "none"}
        config = kind.config_class(**{**spec, "init_from": None} if name == "frcnn" else spec)
        kind.build_model(config).load_state_dict(fold_weights(trained_run / "weights", name, 0))
    with pytest.raises(TrainingError, match="no fold 3 of model 'study'"):
        fold_weights(trained_run / "weights", "study", 3)
    with pytest.raises(TrainingError, match="YOLO: cannot start from"):
        train_folds(KINDS["yolo"], KINDS["yolo"].config_class(folds=[0]),
                    RunOptions(prepared=trained_run / "prepared" / "meta.csv", out=tmp_path / "y",
                               start_from=trained_run / "weights"))


@pytest.mark.slow
def test_a_training_image_under_another_name_is_refused_before_any_prediction(trained_run, siim_dataset, tmp_path,
                                                                             monkeypatch):
    """A fold-0 training DICOM put among the test images under a new name (a copy, a hard link), its UIDs
    rewritten too (then only its pixels tell), and an --out that is round one's prepared folder: each
    refused in one line before the first prediction, round one's files untouched."""
    import pydicom

    from utils.data.inputs import find_dicoms
    from utils.prediction.predictor import Ensemble

    monkeypatch.setattr(Ensemble, "predict_paths", lambda *a, **k: pytest.fail("predicted before the check"))
    meta = pd.read_csv(trained_run / "prepared" / "meta.csv", dtype=str)
    held_out = set(meta.loc[meta["fold"] == "0", "image_id"])
    source = next(p for p in find_dicoms(siim_dataset / "train") if p.stem in held_out)
    config = str(REPO / "train" / "configs" / "demo.yaml")

    def test_folder(name: str, place):
        data = tmp_path / name
        shutil.copytree(siim_dataset / "test", data / "test")
        target = data / "test" / f"{name}study" / f"{name}series" / f"{name}image.dcm"
        target.parent.mkdir(parents=True)
        place(target)
        sample = pd.read_csv(siim_dataset / "sample_submission.csv")
        extra = pd.DataFrame({"id": [f"{name}image_image", f"{name}study_study"],
                              "PredictionString": ["none 1 0 0 1 1", "negative 1 0 0 1 1"]})
        pd.concat([sample, extra]).to_csv(data / "sample_submission.csv", index=False)
        return data

    def new_uids(target) -> None:
        dataset = pydicom.dcmread(source)
        dataset.SOPInstanceUID, dataset.StudyInstanceUID = "1.2.3.4.5", "1.2.3.4.6"
        dataset.save_as(target)

    before = (trained_run / "prepared" / "meta.csv").read_bytes()
    by_header = f"its DICOM header.s SOPInstanceUID {source.stem} is a training image"
    for name, place, message in [
        ("copy", lambda t: shutil.copyfile(source, t), by_header),
        ("link", lambda t: t.hardlink_to(source), by_header),
        ("uids", new_uids, f"its pixels are those of training image {source.stem}"),
    ]:
        data = test_folder(name, place)
        with pytest.raises(SystemExit, match=f"image {name}image to pseudo-label is a training image under another "
                                             f"name: {message}"):
            pseudo_label.main(["--run-dir", str(trained_run), "--images", str(data), "--out",
                               str(tmp_path / f"{name}-out"), "--config", config, "--no-progress",
                               "--set", "none_threshold=0.5", "box_threshold=0.5"])
    with pytest.raises(SystemExit, match=r"--out .*prepared/meta.csv is an input of this run"):
        pseudo_label.main(["--run-dir", str(trained_run), "--images", str(siim_dataset), "--out",
                           str(trained_run / "prepared"), "--config", config, "--no-progress"])
    assert (trained_run / "prepared" / "meta.csv").read_bytes() == before
    # Nothing is written into round one's weights or prepared folder, nor among the images.
    for out in (trained_run / "weights", trained_run / "weights" / "p", trained_run / "prepared" / "p"):
        with pytest.raises(SystemExit, match=rf"--out .*{out.name} is inside the input folder "):
            pseudo_label.main(["--run-dir", str(trained_run), "--images", str(siim_dataset), "--out", str(out),
                               "--config", config, "--no-progress"])
    assert not (trained_run / "weights" / "p").exists() and not (trained_run / "prepared" / "p").exists()
