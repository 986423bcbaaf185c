"""Faster R-CNN: the model (its eval path against torchvision's own, the trunk from the NIH
checkpoint), the geometry from a DICOM to training targets, and a real tiny run of
train/train_kind.py --kind frcnn with RSNA pre-training, per-fold OOF predictions, scores and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from torchvision.ops.misc import FrozenBatchNorm2d

from train import train_kind
from utils.data.boxes import denormalize_xyxy, normalize_xyxy
from utils.data.datasets import DetectionDataset
from utils.data.decoding_cache import decode_one
from utils.data.dicom_writer import display_to_stored, write_dicom
from utils.data.predictions import PREDICTION_COLUMNS, read_predictions
from utils.data.presets import build_transform
from utils.data.synthetic import make_rsna_dataset
from utils.ensemble.manifest import read_manifest
from utils.kinds.frcnn.network import FasterRCNNDetector, load_detector_state, unpad_detections
from utils.nets.models import WeightsError
from utils.training.checkpoints import load_checkpoint
from utils.training.loaders import collate_detection

TINY_FRCNN = ["epochs=1", "pretrain_epochs=1", "image_size=64", "predict_size=96", "batch_size=4",
              "val_batch_size=4", "workers=0", "amp=off", "device=cpu", "backbone=none", "freeze_bn=false",
              "proposals=50", "roi_samples=32", "folds=[0]"]


def _images(n=2, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=generator) for _ in range(n)]


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return FasterRCNNDetector(image_size=64, freeze_bn=False, proposals=50, roi_samples=32).eval()


def test_eval_outputs_are_torchvisions_detections_normalised_and_padded(detector):
    images = _images()
    with torch.no_grad():
        ours = detector(images)
        reference = detector.net(images)  # torchvision's own eval forward
    assert ours["boxes"].shape == (2, 100, 4) and ours["scores"].shape == (2, 100)
    for (boxes, scores), found in zip(unpad_detections(ours), reference):
        assert len(scores) == len(found["scores"]) > 0
        assert boxes * 64 == pytest.approx(found["boxes"].numpy(), abs=1e-3)
        assert scores == pytest.approx(found["scores"].numpy(), abs=1e-6)
        assert (boxes >= 0).all() and (boxes <= 1).all()


def test_eval_with_targets_adds_the_four_losses_and_leaves_detections_alone(detector):
    images = _images()
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # a negative
    with torch.no_grad():
        plain = detector(images)
        with_losses = detector(images, targets)
    losses = {k for k in with_losses if k.startswith("loss")}
    assert losses == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(with_losses[k]) for k in losses)
    for key in ("boxes", "scores", "n_detections"):
        assert torch.equal(plain[key], with_losses[key])
    assert not detector.net.rpn.training and not detector.net.roi_heads.training  # put back in eval mode


def test_prediction_size_changes_the_input_resolution(detector):
    detector.set_image_size(96)
    try:
        batch, _ = detector.net.transform(_images(1, 64))
        assert tuple(batch.tensors.shape[-2:]) == (96, 96)
    finally:
        detector.set_image_size(64)


def test_trunk_starts_from_the_nih_backbone_with_frozen_norms(backbone_run):
    checkpoint = load_checkpoint(backbone_run / "best.pt")["model"]
    model = FasterRCNNDetector(trunk_weights=str(backbone_run / "best.pt"), image_size=48, trainable_layers=3)
    body = model.net.backbone.body
    assert torch.equal(body.layer3[0].conv2.weight, checkpoint["trunk.layer3.0.conv2.weight"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.layer1[0].bn1.running_mean, checkpoint["trunk.layer1.0.bn1.running_mean"])
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


def test_a_checkpoint_that_does_not_fit_is_refused(detector, tmp_path):
    state = {k: v for k, v in detector.state_dict().items() if "roi_heads" not in k}
    with pytest.raises(WeightsError, match="rsna.pt: does not fit this detector: missing"):
        load_detector_state(FasterRCNNDetector(image_size=64, freeze_bn=False), state, tmp_path / "rsna.pt")


def test_boxes_of_a_dicom_reach_the_model_at_the_right_place(tmp_path):
    """A MONOCHROME1 12-bit DICOM of 240 x 150 with an opacity drawn at a known place -> prepared PNGs
    -> detector targets at two sizes -> back to DICOM pixels: the same box, and bright pixels inside."""
    height, width = 150, 240
    box = np.array([[140.0, 40.0, 200.0, 110.0]])
    display = np.full((height, width), 0.2, dtype=np.float32)
    display[40:110, 140:200] = 0.9
    stored = display_to_stored(display, bits_stored=12, photometric="MONOCHROME1")
    dicom = write_dicom(tmp_path / "study" / "series" / "img.dcm", stored, bits_stored=12, photometric="MONOCHROME1")
    decoded = decode_one(Path(dicom), tmp_path / "prepared", (64, 128))
    assert (decoded.original_height, decoded.original_width) == (height, width)
    for size in (64, 128):
        data = DetectionDataset([tmp_path / "prepared" / f"images_{size}" / "img.png"],
                                [normalize_xyxy(box, width, height)], build_transform("detector_eval", size))
        images, targets, _ = collate_detection([data[0]])
        target = targets[0]["boxes"].numpy()
        back = denormalize_xyxy(normalize_xyxy(target, size, size), width, height)
        assert back == pytest.approx(box, abs=1e-3)
        x1, y1, x2, y2 = np.round(target[0]).astype(int)
        inside, outside = images[0][0, y1 + 1:y2 - 1, x1 + 1:x2 - 1], images[0][0, :, : x1 - 1]
        assert inside.min() > 0.8 and outside.max() < 0.3  # MONOCHROME1 shown the right way round


# ----------------------------------------------------------------------------- the training script


@pytest.fixture(scope="module")
def frcnn_run(detection_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("frcnn")
    make_rsna_dataset(out / "rsna_data", n_images=10, seed=2, image_size=96, progress=False)
    argv = ["--kind", "frcnn", "--prepared", str(detection_prepared), "--out", str(out / "run"), "--weights-dir",
            str(out / "weights"), "--config", str(REPO / "train" / "configs" / "demo.yaml"), "--no-progress",
            "--set", *TINY_FRCNN, f"pretrain_rsna={out / 'rsna_data'}"]
    assert train_kind.main(argv) == 0
    return out


def test_rsna_pretraining_runs_first_and_the_folds_start_from_it(frcnn_run):
    rsna = frcnn_run / "run" / "rsna"
    assert (rsna / "prepared" / "meta.csv").is_file() and (rsna / "fold0" / "best.pt").is_file()
    assert "opacity_ap" in json.loads((rsna / "oof_scores.json").read_text())
    fold_config = load_checkpoint(frcnn_run / "run" / "fold0" / "last.pt")["config"]
    assert fold_config["init_from"] == str(rsna / "fold0" / "best.pt")
    assert f"init_from: {rsna / 'fold0' / 'best.pt'}" in (frcnn_run / "run" / "config.yaml").read_text()


def test_fold_run_writes_curves_metrics_and_scores(frcnn_run):
    fold = frcnn_run / "run" / "fold0"
    for name in ("best.pt", "last.pt", "metrics.csv", "loss_curve.png"):
        assert (fold / name).is_file(), name
    metrics = pd.read_csv(fold / "metrics.csv")
    assert {"train_loss", "val_loss", "val_opacity_ap", "train_loss_objectness"} <= set(metrics.columns)
    scores = json.loads((frcnn_run / "run" / "oof_scores.json").read_text())
    assert set(scores) >= {"opacity_ap", "baseline_fixed_boxes_ap", "per_fold", "n_images", "n_truth_boxes"}
    assert "fixed-box baseline" in (frcnn_run / "run" / "oof_scores.txt").read_text()


def test_out_of_fold_boxes_are_normalised_and_from_the_held_out_fold(frcnn_run, detection_prepared):
    table = pd.read_csv(detection_prepared, dtype={"image_id": str})
    oof = read_predictions(frcnn_run / "run" / "oof_predictions.csv")
    assert list(oof.columns) == list(PREDICTION_COLUMNS) and len(oof) > 0
    assert set(oof["image_id"]) <= set(table.loc[table["fold"] == 0, "image_id"])
    assert set(oof["model"]) == {"frcnn"} and set(oof["fold"]) == {0}
    boxes = oof[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
    assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
    assert oof["score"].between(0.001, 1.0).all()


def test_fold_weights_are_registered_and_load_into_the_detector(frcnn_run):
    entry = read_manifest(frcnn_run / "weights")["models"]["frcnn"]
    assert entry["kind"] == "frcnn" and entry["folds"] == [0] and entry["input_size"] == 96
    config = entry["config"]
    model = FasterRCNNDetector(config["arch"], image_size=entry["input_size"], freeze_bn=config["freeze_bn"],
                               trainable_layers=config["trainable_layers"])
    state = torch.load(frcnn_run / "weights" / entry["files"]["0"], map_location="cpu")
    load_detector_state(model, state, "fold0.pt")
