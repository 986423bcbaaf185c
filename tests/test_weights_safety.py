"""Data is never code: a weights file whose unpickling would run code (here: create a file) is refused,
naming the file, by every loader (a weights folder's models of each kind, a checkpoint to resume or to
start from, a trunk file, YOLO's starting weights), and nothing in it runs. YOLO folds are stored as
model yaml + state dict; ultralytics' pickles are refused with the command that converts them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, write_code_running_weights

from utils.benchmarking.benchmarks import write_untrained_weights
from utils.ensemble.manifest import ManifestError
from utils.kinds.frcnn.training import KIND as FRCNN
from utils.kinds.frcnn.training import FrcnnConfig
from utils.kinds.registry import RunOptions, TrainingError
from utils.kinds.yolo.network import (
    CONVERT_COMMAND,
    YoloWeightsError,
    check_model_yaml,
    convert_ultralytics_pickle,
    default_settings_dir,
    import_ultralytics,
    load_yolo,
    read_yolo_weights,
    save_yolo_weights,
)
from utils.kinds.yolo.training import KIND as YOLO_KIND
from utils.kinds.yolo.training import YoloConfig
from utils.nets.models import WeightsError, build_feature_trunk, build_trunk, load_trunk_weights
from utils.prediction.predictor import Ensemble
from utils.training.checkpoints import CheckpointError, load_checkpoint

DEMO = REPO / "train" / "configs" / "demo.yaml"
TINY = {"study": {"image_size": 64, "arch": "resnet18"},
        "frcnn": {"image_size": 64, "predict_size": 64, "arch": "resnet18", "proposals": 20, "roi_samples": 16},
        "yolo": {"model": "yolov8n.yaml", "image_size": 64, "predict_size": 64},
        "ensemble": {"workers": 0, "device": "cpu", "batch_size": 2, "amp": "off"}}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_weights")
    write_untrained_weights(out, DEMO, folds=1, overrides=TINY)
    return out


@pytest.fixture
def crafted(tmp_path):
    """(a code-running .pt, the file its unpickling creates): the payload is checked to work, so each
    test below would fail if a loader unpickled it."""
    marker = tmp_path / "code_ran"
    path = write_code_running_weights(tmp_path / "crafted.pt", marker)
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.is_file()
    marker.unlink()
    return path, marker


@pytest.mark.parametrize("model", ["study", "frcnn", "yolo"])
def test_a_code_running_file_in_a_weights_folder_is_refused_for_each_kind(tiny_weights, crafted, tmp_path, model):
    path, marker = crafted
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    target = weights / json.loads((weights / "manifest.json").read_text())["models"][model]["files"]["0"]
    shutil.copyfile(path, target)
    with pytest.raises(ManifestError, match=str(target)):
        Ensemble(weights)
    assert not marker.exists()


def test_a_code_running_checkpoint_is_refused_to_resume_or_start_from(crafted, tmp_path):
    path, marker = crafted
    with pytest.raises(CheckpointError, match=f"{path}: not a readable checkpoint"):
        load_checkpoint(path)
    # Faster R-CNN's init_from (its RSNA pre-training), where its training builds the detector.
    with pytest.raises(CheckpointError, match=f"{path}: not a readable checkpoint"):
        FRCNN.build_model(FrcnnConfig(arch="resnet18", backbone="none", init_from=str(path)))
    assert not marker.exists()


def test_a_code_running_trunk_file_is_refused(crafted):
    path, marker = crafted
    with pytest.raises(WeightsError, match=f"{path}: not a readable torch file"):
        load_trunk_weights(build_trunk("resnet18", "none"), path)
    with pytest.raises(WeightsError, match=f"{path}: not a readable torch file"):
        build_feature_trunk("timm:resnet18", str(path))
    assert not marker.exists()


def test_a_code_running_file_as_yolo_starting_weights_is_refused(crafted, tmp_path):
    path, marker = crafted
    options = RunOptions(prepared=tmp_path / "meta.csv", out=tmp_path / "run", weights_dir=None)
    with pytest.raises(TrainingError, match=f"{path}: not an ultralytics weights file that loads without running"):
        YOLO_KIND.start(pd.DataFrame(), YoloConfig(model=str(path)), options)
    assert not marker.exists()


def test_yolo_folds_are_data_and_load_to_the_same_predictions(tmp_path):
    ultralytics = import_ultralytics(default_settings_dir())
    reference = ultralytics.YOLO("yolov8n.yaml", task="detect")
    network = reference.model
    path = save_yolo_weights(network, tmp_path / "fold0.pt")
    content = torch.load(path, weights_only=True)  # plain data: loads without any allowed class
    assert set(content) == {"format", "model_yaml", "state_dict"}
    loaded = load_yolo(ultralytics, path)
    images = torch.rand(2, 3, 64, 64)
    # The stored weights are half precision (as ultralytics stores them): compare with the rounded network.
    network.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in network.state_dict().items()})
    ours = loaded.predict(images, imgsz=64, conf=0.0, verbose=False, device="cpu")
    theirs = reference.predict(images, imgsz=64, conf=0.0, verbose=False, device="cpu")
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.boxes.data.numpy(), b.boxes.data.numpy(), atol=1e-4)


def test_an_ultralytics_pickle_is_refused_with_the_command_that_converts_it(tmp_path):
    ultralytics = import_ultralytics(default_settings_dir())
    old = tmp_path / "fold0.pt"
    ultralytics.YOLO("yolov8n.yaml", task="detect").save(old)  # the format of weights folders before 2026-12
    with pytest.raises(YoloWeightsError, match=f"{old}: an ultralytics pickle.*{CONVERT_COMMAND} {old}"):
        read_yolo_weights(old)
    from infer import convert_yolo_weights

    assert convert_yolo_weights.main([str(old)]) == 0
    load_yolo(ultralytics, old)  # now data
    with pytest.raises(YoloWeightsError, match="already in format"):
        convert_ultralytics_pickle(old)


@pytest.mark.parametrize("layer_module, activation, message", [
    ("torch_safe_load", None, "'torch_safe_load' is not a network layer"),
    ("nn.functional", None, "'nn.functional' is not a network layer"),
    ("Conv", "__import__('os').system('x')", "is not of the form nn.Name()"),
    ("Conv", "nn.SiLU()", None),
])
def test_a_yolo_model_yaml_can_only_name_network_layers(layer_module, activation, message):
    model_yaml = {"nc": 1, "backbone": [[-1, 1, layer_module, [16, 3, 2]]], "head": []}
    if activation:
        model_yaml["activation"] = activation
    if message is None:
        assert check_model_yaml(model_yaml, "x.pt") is model_yaml
    else:
        with pytest.raises(YoloWeightsError, match=rf"x.pt: .*{message.replace('(', '[(]').replace(')', '[)]')}"):
            check_model_yaml(model_yaml, "x.pt")
