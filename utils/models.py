"""Networks: the torchvision ResNet/ResNeXt trunks, how their weights are loaded, and the two classifiers.

Every model follows the engine's contract: ``model(images)`` returns a dict of outputs (logits) and
``model(images, targets)`` adds the ``loss_*`` entries. The trunk is a torchvision ResNet or ResNeXt
(:data:`ARCHITECTURES`: the report's ResNeXt-50/101, and the ResNets that train on a CPU) with its
``fc`` removed, kept under the attribute ``trunk`` so that checkpoints of every classifier carry
torchvision's own parameter names behind the ``trunk.`` prefix; :func:`load_trunk_weights` reads
either form (an ImageNet file from torchvision, or one of our checkpoints) into any ResNeXt, which
is how the study classifier and the Faster R-CNN start from the NIH backbone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_models = torchvision.models
ARCHITECTURES = {  # name -> (builder, torchvision's ImageNet weights)
    "resnet18": (_models.resnet18, _models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (_models.resnet34, _models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (_models.resnet50, _models.ResNet50_Weights.IMAGENET1K_V2),
    "resnext50_32x4d": (_models.resnext50_32x4d, _models.ResNeXt50_32X4D_Weights.IMAGENET1K_V2),
    "resnext101_32x8d": (_models.resnext101_32x8d, _models.ResNeXt101_32X8D_Weights.IMAGENET1K_V2),
}
PRETRAINED_IMAGENET = "imagenet"  # torchvision's download (needs the internet once)
PRETRAINED_NONE = "none"  # random initialisation
TRUNK_PREFIX = "trunk."


class WeightsError(ValueError):
    """A weights file that cannot initialise the network; names the file and the reason."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise WeightsError(f"{path}: not a readable torch file ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our engine checkpoints
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict or a checkpoint with a 'model' state dict")
    return state


def trunk_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's parameters under torchvision's names: the ``trunk.`` prefix of our classifiers is
    removed when present, and heads (``fc.*``, anything outside the trunk) are left out."""
    if any(k.startswith(TRUNK_PREFIX) for k in state):
        state = {k[len(TRUNK_PREFIX):]: v for k, v in state.items() if k.startswith(TRUNK_PREFIX)}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_trunk_weights(net: nn.Module, path) -> nn.Module:
    """Load the trunk weights of file ``path`` into torchvision ResNeXt ``net`` (its ``fc`` untouched).

    ``path`` is a torchvision ImageNet state dict or any checkpoint of this project. Every trunk
    parameter must be present with the right shape: a file for another architecture is an error.
    """
    path = Path(path)
    state = trunk_state_dict(_read_state_dict(path))
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise WeightsError(f"{path}: does not fit this trunk: {len(missing)} missing (e.g. {missing[:2]}), "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(wrong)} with another "
                           f"shape (e.g. {wrong[:2]}); is it for another architecture?")
    net.load_state_dict(state, strict=False)
    log.info("trunk initialised from %s", path)
    return net


def build_trunk(arch: str = "resnext50_32x4d", pretrained: str | None = PRETRAINED_NONE) -> nn.Module:
    """A torchvision ResNet/ResNeXt (:data:`ARCHITECTURES`). ``pretrained``: a local weights file (ImageNet state dict or our
    checkpoint), ``"imagenet"`` for torchvision's download, or ``"none"``/``None`` for random weights."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    builder, imagenet = ARCHITECTURES[arch]
    if pretrained in (None, "", PRETRAINED_NONE):
        return builder(weights=None)
    if pretrained == PRETRAINED_IMAGENET:
        try:
            return builder(weights=imagenet)
        except Exception as err:  # noqa: BLE001 - urllib/hub raise many types; the advice is the same
            raise WeightsError(
                f"could not download {imagenet} ({type(err).__name__}: {err}); offline, pass the file "
                f"instead: --pretrained /path/to/{arch}.pth") from err
    return load_trunk_weights(builder(weights=None), pretrained)


def _trunk(arch: str, pretrained: str | None) -> tuple[nn.Module, int]:
    net = build_trunk(arch, pretrained)
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features


class MultiLabelClassifier(nn.Module):
    """ResNeXt + one linear layer of independent logits (the 14 NIH findings); BCE-with-logits loss."""

    def __init__(self, n_outputs: int, arch: str = "resnext50_32x4d", pretrained: str | None = PRETRAINED_NONE):
        super().__init__()
        self.trunk, features = _trunk(arch, pretrained)
        self.head = nn.Linear(features, n_outputs)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(self.trunk(images))
        outputs = {"logits": logits}
        if targets is not None:
            # Logits-based loss: autocast runs it in float32, so half precision stays stable.
            outputs["loss_bce"] = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
        return outputs


class StudyClassifier(nn.Module):
    """ResNeXt with two heads: the four study classes (softmax) and the image-level "none" (sigmoid).

    Targets: ``{"study": int64 class index, "none": float 0/1}``. Losses: cross-entropy on the study
    logits and BCE-with-logits on the none logit (times ``none_weight``); both from logits in float32.
    """

    def __init__(self, arch: str = "resnext50_32x4d", pretrained: str | None = PRETRAINED_NONE,
                 n_classes: int = 4, none_weight: float = 1.0):
        super().__init__()
        self.trunk, features = _trunk(arch, pretrained)
        self.study_head = nn.Linear(features, n_classes)
        self.none_head = nn.Linear(features, 1)
        self.none_weight = none_weight

    def forward(self, images: torch.Tensor, targets: dict | None = None) -> dict[str, torch.Tensor]:
        features = self.trunk(images)
        outputs = {"study_logits": self.study_head(features), "none_logits": self.none_head(features)[:, 0]}
        if targets is not None:
            outputs["loss_study"] = F.cross_entropy(outputs["study_logits"].float(), targets["study"].long())
            outputs["loss_none"] = self.none_weight * F.binary_cross_entropy_with_logits(
                outputs["none_logits"].float(), targets["none"].float())
        return outputs

    @staticmethod
    def probabilities(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(study probabilities (N, 4), none probability (N,))`` from :meth:`forward`'s logits."""
        return outputs["study_logits"].float().softmax(dim=1), outputs["none_logits"].float().sigmoid()
