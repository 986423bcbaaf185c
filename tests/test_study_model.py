"""The study model's additions: the auxiliary segmentation head and its box masks, label smoothing,
EMA of the weights in the engine (validation, checkpoints, exact resume), TTA views, timm trunks, and
the ablation script on a tiny real run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import classifier_scores_by_hand
from test_engine import LinearModel, TensorItems, _tiny_config

from train import study_ablation
from utils.core.config import ConfigError, load_section
from utils.data.boxes import boxes_to_mask
from utils.data.datasets import StudyDataset
from utils.data.labels import STUDY_CLASSES
from utils.data.presets import build_transform
from utils.kinds.study.network import StudyClassifier, mix_batch, segmentation_loss
from utils.kinds.study.tta import EIGHT_VIEWS, StudyTTA, apply_view, check_views
from utils.nets.models import WeightsError
from utils.training.checkpoints import load_checkpoint
from utils.training.ema import ModelEma
from utils.training.loop import fit

TARGETS = {"study": torch.tensor([0, 1]), "none": torch.tensor([1.0, 0.0])}


def test_box_mask_covers_the_boxes_in_pixels():
    mask = boxes_to_mask([[0.25, 0.5, 0.5, 1.0]], 8, 4)  # height 8, width 4
    assert mask.shape == (8, 4) and mask.dtype == np.uint8
    assert mask.sum() == 4 and mask[4:, 1].all() and not mask[:4].any()
    assert not boxes_to_mask([], 5, 5).any()


def test_segmentation_loss_ignores_invalid_images_and_rewards_the_right_mask():
    masks = torch.zeros(2, 16, 16)
    masks[0, :8, :8] = 1
    right = torch.full((2, 1, 4, 4), -8.0)
    right[0, 0, :2, :2] = 8.0
    wrong = -right
    valid = torch.tensor([1.0, 1.0])
    assert segmentation_loss(right, masks, valid) < 0.01 < 1.0 < segmentation_loss(wrong, masks, valid)
    # The second image's wrong prediction does not count once it is not valid.
    mixed = torch.stack([right[0], wrong[1]])
    assert segmentation_loss(mixed, masks, torch.tensor([1.0, 0.0])) < 0.01
    assert segmentation_loss(wrong, masks, torch.zeros(2)).item() == 0.0


def test_auxiliary_head_trains_only_when_asked_and_is_skipped_in_prediction():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[1, 8:40, 8:30] = 1
    targets = {**TARGETS, "mask": masks, "mask_valid": torch.tensor([1.0, 1.0])}
    model = StudyClassifier("resnet18", None, seg_weight=0.5)
    outputs = model(images, targets)
    assert outputs["mask_logits"].shape == (2, 1, 8, 8)  # stride 8
    assert outputs["loss_seg"].item() == pytest.approx(
        0.5 * segmentation_loss(outputs["mask_logits"], masks, targets["mask_valid"]).item(), rel=1e-5)
    model.eval()
    assert "mask_logits" not in model(images) and model(images, with_mask=True)["mask_logits"].shape == (2, 1, 8, 8)
    plain = StudyClassifier("resnet18", None)
    assert plain.decoder is None and "loss_seg" not in plain(images, targets)
    assert not any(k.startswith("decoder.") for k in plain.state_dict())
    with pytest.raises(ValueError, match="seg_weight"):
        StudyClassifier("resnet18", None, seg_weight=-1)


def test_label_smoothing_softens_both_targets():
    torch.manual_seed(0)
    model = StudyClassifier("resnet18", None, label_smoothing=0.1).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 32, 32), TARGETS)
    logits = outputs["study_logits"]
    assert outputs["loss_study"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, TARGETS["study"], label_smoothing=0.1).item(), rel=1e-5)
    soft_none = torch.tensor([0.95, 0.05])
    assert outputs["loss_none"].item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(outputs["none_logits"], soft_none).item(), rel=1e-5)


def test_class_weights_weight_the_study_loss_and_bad_weights_are_refused(tmp_path):
    from utils.kinds.study.training import StudyConfig

    torch.manual_seed(0)
    weights = [1.0, 1.0, 2.0, 3.0]
    targets = {"study": torch.tensor([0, 2, 3]), "none": torch.tensor([1.0, 0.0, 0.0])}
    model = StudyClassifier("resnet18", None, class_weights=weights).eval()
    with torch.no_grad():
        outputs = model(torch.randn(3, 3, 32, 32), targets)
    logits = outputs["study_logits"]
    by_hand = -(torch.tensor(weights)[targets["study"]] * logits.log_softmax(1)[torch.arange(3), targets["study"]])
    assert outputs["loss_study"].item() == pytest.approx((by_hand.sum() / 6.0).item(), rel=1e-5)
    assert outputs["loss_study"].item() != pytest.approx(
        torch.nn.functional.cross_entropy(logits, targets["study"]).item(), rel=1e-3)
    # A loss setting: the weights file is the same as the unweighted model's, so old manifests still load.
    assert model.state_dict().keys() == StudyClassifier("resnet18", None).state_dict().keys()
    assert StudyClassifier.from_config({"arch": "resnet18", "class_weights": weights}).class_weights == tuple(weights)
    for bad in ("[1, 1, 1]", "[1, 1, 0, 1]", "[1, 1, .nan, 1]"):
        path = tmp_path / "c.yaml"
        path.write_text(f"study:\n  arch: resnet18\n  class_weights: {bad}\n")
        with pytest.raises(ConfigError, match=r"c.yaml \[study\].*class_weights"):
            load_section(path, "study", StudyConfig)


def test_mixup_blends_images_and_every_target_alike_only_in_training():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    masks = torch.zeros(4, 16, 16, dtype=torch.uint8)
    masks[1, :8] = 1
    targets = {"study": torch.tensor([0, 1, 2, 3]), "none": torch.tensor([1.0, 0.0, 0.0, 1.0]), "mask": masks,
               "mask_valid": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    torch.manual_seed(3)
    mixed, mixed_targets = mix_batch(images, targets, alpha=0.4)
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    order = torch.randperm(4)
    assert 0 < lam < 1 and not torch.equal(order, torch.arange(4))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[order])
    one_hot = torch.eye(4)
    assert torch.allclose(mixed_targets["study_probs"], lam * one_hot + (1 - lam) * one_hot[order])
    assert "study" not in mixed_targets and torch.allclose(mixed_targets["study_probs"].sum(1), torch.ones(4))
    assert torch.allclose(mixed_targets["none"], lam * targets["none"] + (1 - lam) * targets["none"][order])
    assert torch.allclose(mixed_targets["mask"], lam * masks.float() + (1 - lam) * masks.float()[order])
    # a mask is a target only where both images' boxes are known
    assert torch.equal(mixed_targets["mask_valid"], targets["mask_valid"] * targets["mask_valid"][order])
    model = StudyClassifier("resnet18", None, seg_weight=0.5, mixup_alpha=0.4)
    outputs = model(images, targets)
    loss = sum(v for k, v in outputs.items() if k.startswith("loss"))
    loss.backward()
    assert torch.isfinite(loss) and model.study_head.weight.grad.abs().sum() > 0
    model.eval()  # validation and prediction see the images as they are
    with torch.no_grad():
        evaluated = model(images, targets)
    assert evaluated["loss_study"].item() == pytest.approx(torch.nn.functional.cross_entropy(
        evaluated["study_logits"], targets["study"]).item(), rel=1e-5)
    assert StudyClassifier.from_config({"arch": "resnet18", "mixup_alpha": 0.2}).mixup_alpha == 0.2
    with pytest.raises(ValueError, match="mixup_alpha"):
        StudyClassifier("resnet18", None, mixup_alpha=-1.0)


def test_study_dataset_moves_the_mask_with_the_image(tmp_path):
    import cv2

    image = np.zeros((40, 40), np.uint8)
    image[:, :10] = 255  # bright left band: where the box is
    cv2.imwrite(str(tmp_path / "a.png"), image)
    target = {"study": 1, "none": 0.0, "boxes": np.array([[0.0, 0.0, 0.25, 1.0]]), "mask_valid": 1.0}
    flip_only = build_transform("study_eval", 40)
    flip_only.transforms.insert(1, __import__("albumentations").HorizontalFlip(p=1.0))
    for transform, side in ((build_transform("study_eval", 40), slice(0, 10)), (flip_only, slice(30, 40))):
        dataset = StudyDataset([tmp_path / "a.png"], [target], transform)
        tensor, out, _ = dataset[0]
        assert out["mask"].shape == (40, 40) and out["mask"].dtype == torch.uint8
        assert out["mask"][:, side].all() and out["mask"].sum() == 400
        assert (tensor[0][:, side] > 0).all()  # the bright band went the same way
        assert set(out) == {"study", "none", "mask", "mask_valid"}


def test_tta_views_and_their_average():
    batch = torch.randn(2, 3, 32, 32)
    assert torch.equal(apply_view(batch, "identity"), batch)
    assert torch.equal(apply_view(batch, "hflip"), batch.flip(-1))
    assert torch.allclose(apply_view(batch, "zoom_in+hflip"), apply_view(batch, "zoom_in").flip(-1), atol=1e-6)
    for view in EIGHT_VIEWS:
        assert apply_view(batch, view).shape == batch.shape
    with pytest.raises(ValueError, match="zoom_sideways"):
        check_views(["identity", "hflip+zoom_sideways"])
    with pytest.raises(ValueError, match="at least one"):
        check_views([])
    torch.manual_seed(0)
    model = StudyClassifier("resnet18", None).eval()
    with torch.no_grad():
        plain = StudyClassifier.probabilities(model(batch))
        single = StudyClassifier.probabilities(StudyTTA(model, ["identity"])(batch))
        flipped = StudyClassifier.probabilities(model(batch.flip(-1)))
        both = StudyClassifier.probabilities(StudyTTA(model, ["identity", "hflip"])(batch))
    assert torch.allclose(single[0], plain[0], atol=1e-6) and torch.allclose(single[1], plain[1], atol=1e-6)
    assert torch.allclose(both[0], (plain[0] + flipped[0]) / 2, atol=1e-6)
    assert torch.allclose(both[1], (plain[1] + flipped[1]) / 2, atol=1e-6)


def test_unknown_view_in_a_config_is_a_config_error(tmp_path):
    from utils.kinds.study.training import StudyConfig

    path = tmp_path / "c.yaml"
    path.write_text("study:\n  arch: resnet18\n  tta_views: [identity, mirror]\n")
    with pytest.raises(ConfigError, match=r"c.yaml \[study\].*unknown TTA view 'mirror'"):
        load_section(path, "study", StudyConfig)


def test_ema_follows_the_weights_with_its_warm_up():
    model = torch.nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.99)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)  # first update: decay min(0.99, 2/11)
    expected = before + (1 - 2 / 11) * (model.weight - before)
    assert torch.allclose(ema.module.weight, expected)
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEma(model, decay=1.0)


class CrashingModel(LinearModel):
    """Raises at training call ``crash_at`` (a killed run)."""

    def __init__(self, crash_at: int):
        super().__init__()
        self.crash_at = crash_at

    def forward(self, x, y=None):
        if self.training and self.calls + 1 == self.crash_at:
            raise RuntimeError("simulated kill")
        return super().forward(x, y)


def test_fit_with_ema_validates_saves_and_resumes_the_average(tmp_path):
    config = _tiny_config(ema_decay=0.9, epochs=3)
    torch.manual_seed(0)
    straight = fit(LinearModel(), TensorItems(16), TensorItems(8), config, tmp_path / "straight", progress=False)
    state = load_checkpoint(straight.last_checkpoint)
    assert state["ema"]["updates"] == 12  # 4 steps x 3 epochs
    assert not torch.equal(state["model"]["linear.weight"], state["ema"]["train_model"]["linear.weight"])
    # Validation saw the average: its loss is the loss of the "model" weights.
    average = LinearModel()
    average.load_state_dict(state["model"])
    x, y = TensorItems(8).x, TensorItems(8).y
    expected = torch.nn.functional.binary_cross_entropy_with_logits(average.linear(x), y).item()
    assert state["metrics"]["history"][-1]["val_loss"] == pytest.approx(expected, rel=1e-5)

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit(CrashingModel(crash_at=6), TensorItems(16), TensorItems(8), config, tmp_path / "resumed", progress=False)
    torch.manual_seed(0)
    resumed = load_checkpoint(fit(LinearModel(), TensorItems(16), TensorItems(8), config, tmp_path / "resumed",
                                  resume=True, progress=False).last_checkpoint)
    for name, tensor in state["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    for name, tensor in state["ema"]["train_model"].items():
        assert torch.equal(tensor, resumed["ema"]["train_model"][name]), name
    assert resumed["ema"]["updates"] == 12


def test_timm_trunk_random_and_from_a_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = StudyClassifier("timm:resnet18", None, seg_weight=0.5)
    outputs = model(torch.randn(2, 3, 64, 64), {**TARGETS, "mask": torch.zeros(2, 64, 64, dtype=torch.uint8),
                                               "mask_valid": torch.ones(2)})
    assert outputs["study_logits"].shape == (2, 4) and outputs["mask_logits"].shape == (2, 1, 8, 8)
    reference = timm.create_model("resnet18", pretrained=False)
    torch.save(reference.state_dict(), tmp_path / "timm_resnet18.pth")
    loaded = StudyClassifier("timm:resnet18", str(tmp_path / "timm_resnet18.pth"))
    assert torch.equal(loaded.trunk.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(WeightsError, match="does not fit timm model"):
        StudyClassifier("timm:efficientnet_b0", str(tmp_path / "timm_resnet18.pth"))
    with pytest.raises(ValueError, match="unknown timm model"):
        StudyClassifier("timm:no_such_net", None)


def test_ablation_runs_every_variant_and_writes_its_table(detection_prepared, tmp_path):
    out = tmp_path / "ablation"
    argv = ["--prepared", str(detection_prepared), "--config", "train/configs/demo.yaml", "--out", str(out),
            "--variants", "plain", "seg_ema", "--no-progress", "--set", "epochs=1", "image_size=32",
            "batch_size=8", "workers=0", "folds=[0]", "backbone=none", "arch=resnet18", "device=cpu", "amp=off"]
    assert study_ablation.main(argv) == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in rows][:3] == ["prior", "plain", "seg_ema"]
    assert {r["variant"].split(" + TTA ")[-1] for r in rows[3:]} == {"hflip", "8 views"}
    # Each trained variant's figures recomputed from its out-of-fold predictions; the prior's from constant
    # probabilities on the same images (every study tied: the APs of a ranking in id order).
    table = pd.read_csv(detection_prepared, dtype={"image_id": str, "study_id": str})
    table = table[table["fold"] == 0]
    by_variant = {r["variant"]: r for r in rows}
    for name in ("plain", "seg_ema"):
        oof = pd.read_csv(out / name / "oof_predictions.csv", dtype={"image_id": str, "study_id": str})
        by_hand = classifier_scores_by_hand(oof, table)
        assert by_variant[name]["study_map"] == pytest.approx(by_hand["study_map"], abs=1e-9), name
        assert by_variant[name]["none_ap"] == pytest.approx(by_hand["none_ap"], abs=1e-9), name
    constant = oof.assign(**{f"prob_{c}": 0.25 for c in STUDY_CLASSES}, prob_none=0.5)
    assert by_variant["prior"]["study_map"] == pytest.approx(classifier_scores_by_hand(constant, table)["study_map"])
    table = (out / "ablation.md").read_text()
    assert "| prior |" in table and "Command: `python train/study_ablation.py" in table
    # The seg variant really trained the head, and its OOF went through the identity view only.
    metrics = (out / "seg_ema" / "fold0" / "metrics.csv").read_text()
    assert "train_loss_seg" in metrics
    config = (out / "seg_ema" / "config.yaml").read_text()
    assert "- identity" in config and "ema_decay: 0.997" in config


def test_distilled_target_trains_the_mixture_of_the_hard_and_the_soft_loss():
    """The network's soft-target path on the mixed target (label + k * teacher) / (1 + k) is the loss
    (hard + k * soft) / (1 + k) of issue 57, for the study classes and for none, at any temperature."""
    from utils.kinds.study.distillation import distilled_targets, sharpen

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels, nones = np.array([0, 2, 3]), np.array([1.0, 0.0, 0.0])
    teacher = rng.dirichlet(np.ones(4), size=3)
    teacher_none = rng.uniform(0.05, 0.95, size=3)
    model = StudyClassifier("resnet18", None).eval()
    images = torch.randn(3, 3, 32, 32)
    for weight, temperature in ((1.0, 1.0), (3.0, 0.5)):
        study, none = distilled_targets(labels, nones, teacher, teacher_none, weight, temperature)
        assert study.sum(axis=1) == pytest.approx(1.0)
        with torch.no_grad():
            outputs = model(images, {"study_probs": torch.as_tensor(study), "none": torch.as_tensor(none)})
        logits, none_logits = outputs["study_logits"], outputs["none_logits"]
        soft = torch.as_tensor(sharpen(teacher, temperature), dtype=torch.float32)
        hard_loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels))
        soft_loss = torch.nn.functional.cross_entropy(logits, soft)
        assert outputs["loss_study"].item() == pytest.approx(((hard_loss + weight * soft_loss) / (1 + weight)).item(),
                                                             rel=1e-5)
        binary = sharpen(np.stack([teacher_none, 1 - teacher_none], axis=1), temperature)[:, 0]
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        expected_none = (bce(none_logits, torch.as_tensor(nones, dtype=torch.float32))
                         + weight * bce(none_logits, torch.as_tensor(binary, dtype=torch.float32))) / (1 + weight)
        assert outputs["loss_none"].item() == pytest.approx(expected_none.item(), rel=1e-5)


def test_temperature_sharpens_below_one_and_softens_above():
    from utils.kinds.study.distillation import sharpen

    probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    assert sharpen(probs, 1.0) == pytest.approx(probs)
    sharp, soft = sharpen(probs, 0.5), sharpen(probs, 2.0)
    assert sharp[0] == pytest.approx(probs[0] ** 2 / (probs[0] ** 2).sum())
    assert sharp[0, 0] > probs[0, 0] > soft[0, 0] and sharp[0, 3] < probs[0, 3] < soft[0, 3]
    assert np.argsort(sharp[0]).tolist() == np.argsort(probs[0]).tolist()
    assert sharp[1] == pytest.approx(0.25) and soft[1] == pytest.approx(0.25)  # uniform stays uniform


def test_a_teacher_and_its_weight_go_together(tmp_path):
    from utils.kinds.study.training import StudyConfig

    path = tmp_path / "c.yaml"
    for keys, problem in (("distill_weight: 1.0", "teacher and distill_weight go together"),
                          ("teacher: oof.csv", "teacher and distill_weight go together"),
                          ("teacher: oof.csv\n  distill_weight: 1.0\n  distill_temperature: 0", "distill_temperature")):
        path.write_text(f"study:\n  arch: resnet18\n  {keys}\n")
        with pytest.raises(ConfigError, match=problem):
            load_section(path, "study", StudyConfig)
    path.write_text("study:\n  arch: resnet18\n  teacher: oof.csv\n  distill_weight: 3\n")
    assert load_section(path, "study", StudyConfig).distill_weight == 3.0
