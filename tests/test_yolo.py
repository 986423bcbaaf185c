"""YOLO: the export to YOLO format (labels that map back to the DICOM's boxes, empty files for
negatives), and a real tiny run of train/train_kind.py --kind yolo in its own process, offline, with
ultralytics' settings inside the run folder and nothing written to the user's home."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, cxcywh_to_xyxy_norm

from utils.data.boxes import denormalize_xyxy
from utils.data.predictions import PREDICTION_COLUMNS, read_predictions
from utils.ensemble.manifest import read_manifest
from utils.kinds.yolo.fold_setup import label_lines
from utils.kinds.yolo.network import amp_without_download, import_ultralytics
from utils.kinds.yolo.training import results_history
from utils.scoring.detection import read_detection_table

TINY_YOLO = ["epochs=1", "image_size=64", "predict_size=96", "batch_size=8", "workers=0", "device=cpu",
             "model=yolov8n.yaml", "folds=[1]", "amp=false"]


def test_label_lines_are_yolo_cxcywh_and_drop_degenerate_boxes():
    text = label_lines([[0.1, 0.2, 0.5, 0.6], [0.3, 0.3, 0.3, 0.5]])
    assert text == "0 0.300000 0.400000 0.400000 0.400000\n"
    assert label_lines(np.zeros((0, 4))) == ""


def test_the_amp_check_never_downloads(tmp_path):
    import torch

    import_ultralytics(tmp_path / "settings")
    import ultralytics.engine.trainer as trainer

    assert trainer.check_amp is amp_without_download
    assert amp_without_download(torch.nn.Linear(2, 2)) is False  # the CPU: full precision


@pytest.fixture(scope="module")
def yolo_run(detection_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("yolo")
    home = out / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "YOLO_CONFIG_DIR"}
    env.update(HOME=str(home), YOLO_OFFLINE="1", PYTHONPATH=str(REPO))  # "1": the script must force "true"
    command = [sys.executable, str(REPO / "train" / "train_kind.py"), "--kind", "yolo", "--prepared",
               str(detection_prepared), "--out",
               str(out / "run"), "--weights-dir", str(out / "weights"), "--no-progress",
               "--config", str(REPO / "train" / "configs" / "demo.yaml"), "--set", *TINY_YOLO]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_export_once_with_labels_that_map_back_to_the_dicom_boxes(yolo_run, detection_prepared):
    table = read_detection_table(detection_prepared, 64, 96)
    used = table[table["used"]]
    dataset = yolo_run / "run" / "dataset"
    assert sorted(p.stem for p in (dataset / "images").glob("*.png")) == sorted(used["image_id"])
    assert not list(dataset.glob("*.yaml"))  # data yaml files live in the fold folders
    for row in used.itertuples():
        lines = (dataset / "labels" / f"{row.image_id}.txt").read_text().splitlines()
        assert len(lines) == row.n_boxes  # an empty file for an image without opacity
        if lines:
            values = np.array([[float(v) for v in line.split()] for line in lines])
            assert (values[:, 0] == 0).all()
            back = denormalize_xyxy(cxcywh_to_xyxy_norm(values[:, 1:]), row.original_width, row.original_height)
            truth = denormalize_xyxy(row.boxes_norm, row.original_width, row.original_height)
            assert back == pytest.approx(truth, abs=0.01)


def test_fold_data_yaml_lists_the_other_folds_for_training(yolo_run, detection_prepared):
    table = pd.read_csv(detection_prepared, dtype={"image_id": str})
    fold = yolo_run / "run" / "fold1"
    data = yaml.safe_load((fold / "data.yaml").read_text())
    assert data["names"] == {0: "opacity"}
    train = {p.split("/")[-1][:-4] for p in (fold / "train.txt").read_text().split()}
    val = {p.split("/")[-1][:-4] for p in (fold / "val.txt").read_text().split()}
    used = table[table["used"]]
    assert train == set(used.loc[used["fold"] != 1, "image_id"]) and val == set(used.loc[used["fold"] == 1, "image_id"])


def test_runs_offline_with_settings_in_the_run_folder(yolo_run):
    assert (yolo_run / "run" / "ultralytics_settings").is_dir()
    assert any((yolo_run / "run" / "ultralytics_settings").rglob("settings.json"))
    written = [p for p in (yolo_run / "home").rglob("*") if "ultralytics" in str(p).lower()]
    assert not written, f"ultralytics wrote into the user's home: {written}"  # (matplotlib's font cache may)
    assert sorted(p.name for p in yolo_run.iterdir()) == ["home", "run", "weights"]  # nothing in the cwd
    settings = json.loads(next((yolo_run / "run" / "ultralytics_settings").rglob("settings.json")).read_text())
    assert settings["sync"] is False


def test_oof_predictions_scores_curves_and_manifest(yolo_run, detection_prepared):
    table = pd.read_csv(detection_prepared, dtype={"image_id": str})
    run = yolo_run / "run"
    oof = read_predictions(run / "oof_predictions.csv")
    assert list(oof.columns) == list(PREDICTION_COLUMNS)
    assert set(oof["image_id"]) <= set(table.loc[table["fold"] == 1, "image_id"])
    assert set(oof["model"]) <= {"yolo"}
    scores = json.loads((run / "oof_scores.json").read_text())
    assert set(scores) >= {"opacity_ap", "baseline_fixed_boxes_ap", "per_fold"}
    history = results_history(run / "fold1" / "results.csv")
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"]) and history[0]["train_loss"] > 0
    assert (run / "fold1" / "loss_curve.png").is_file()
    entry = read_manifest(yolo_run / "weights")["models"]["yolo"]
    assert entry["kind"] == "yolo" and entry["folds"] == [1] and entry["input_size"] == 96
    assert (yolo_run / "weights" / entry["files"]["1"]).is_file()
