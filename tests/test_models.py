"""Networks and weight loading: a local ImageNet-style file, our own checkpoints, wrong files."""

from __future__ import annotations

import pytest
import torch
import torchvision

from utils.core.loop_config import TrainConfig
from utils.kinds.backbone.network import MultiLabelClassifier
from utils.kinds.study.network import StudyClassifier
from utils.nets.models import ARCHITECTURES, WeightsError, build_trunk, load_trunk_weights
from utils.training.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def imagenet_style_file(tmp_path_factory):
    """What torchvision's download would leave on disk: a plain state dict, fc included."""
    torch.manual_seed(7)
    net = torchvision.models.resnext50_32x4d(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnext50_32x4d.pth"
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def test_local_pretrained_file_initialises_the_trunk(imagenet_style_file):
    path, expected = imagenet_style_file
    model = MultiLabelClassifier(14, "resnext50_32x4d", str(path))
    for name, tensor in model.trunk.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert model.head.out_features == 14


def test_trunk_moves_from_one_of_our_checkpoints_to_another_model(imagenet_style_file, tmp_path):
    path, expected = imagenet_style_file
    backbone = MultiLabelClassifier(14, "resnext50_32x4d", str(path))
    state = {"model": backbone.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1,
             "config": vars(TrainConfig()), "metrics": {}, "ema": None}
    checkpoint = save_checkpoint(tmp_path / "best.pt", state)
    study = StudyClassifier("resnext50_32x4d", str(checkpoint))
    for name, tensor in study.trunk.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    # A bare torchvision ResNeXt (what the Faster R-CNN body is) loads the same trunk.
    net = load_trunk_weights(torchvision.models.resnext50_32x4d(weights=None), checkpoint)
    assert torch.equal(net.layer4[0].conv1.weight, expected["layer4.0.conv1.weight"])


def test_wrong_files_are_clear_errors(imagenet_style_file, tmp_path):
    path, _ = imagenet_style_file
    with pytest.raises(WeightsError, match="another architecture"):
        load_trunk_weights(torchvision.models.resnet18(weights=None), path)
    with pytest.raises(WeightsError, match="absent.pth: weights file not found"):
        build_trunk("resnext50_32x4d", str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(WeightsError, match="junk.pth: not a readable torch file"):
        build_trunk("resnext50_32x4d", str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_trunk("resnet7")


def test_every_architecture_builds():
    assert set(ARCHITECTURES) == {"resnet18", "resnet34", "resnet50", "resnext50_32x4d", "resnext101_32x8d"}
    net = build_trunk("resnext101_32x8d", "none")
    assert net.fc.in_features == 2048 and net.layer3[0].conv2.groups == 32
    assert build_trunk("resnet18", "none").fc.in_features == 512


def test_the_cpu_recipes_light_detector_takes_a_local_resnet18_file(tmp_path):
    """real256.yaml's Faster R-CNN: ResNet-18 trunk, 64-channel pyramid, 256-wide box head; a user with
    torchvision's ImageNet file (here a random one of the same form) passes it as ``backbone``."""
    from utils.kinds.frcnn.network import FasterRCNNDetector

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    detector = FasterRCNNDetector("resnet18", str(tmp_path / "resnet18.pth"), image_size=64, trainable_layers=5,
                                  freeze_bn=False, fpn_channels=64, box_head_size=256, proposals=20, roi_samples=16)
    body = detector.net.backbone.body
    assert torch.equal(body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert detector.net.backbone.out_channels == 64
    assert detector.net.roi_heads.box_head.fc7.out_features == 256
    detector.train()
    losses = detector([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]),
                                                "labels": torch.tensor([1])}])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def test_study_classifier_outputs_and_losses():
    torch.manual_seed(0)
    model = StudyClassifier("resnext50_32x4d", None, none_weight=0.5).eval()
    images = torch.randn(3, 3, 64, 64)
    targets = {"study": torch.tensor([0, 1, 3]), "none": torch.tensor([1.0, 0.0, 0.0])}
    with torch.no_grad():
        outputs = model(images, targets)
    assert outputs["study_logits"].shape == (3, 4) and outputs["none_logits"].shape == (3,)
    expected = torch.nn.functional.cross_entropy(outputs["study_logits"], targets["study"])
    assert outputs["loss_study"].item() == pytest.approx(expected.item(), rel=1e-5)
    study, none = StudyClassifier.probabilities(outputs)
    assert torch.allclose(study.sum(dim=1), torch.ones(3)) and ((none > 0) & (none < 1)).all()
    assert "loss_study" not in model(images)
