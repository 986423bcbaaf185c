"""What every inference member provides: one manifest model's folds loaded for prediction. The predictor
(make_submission, the notebook, the web app) uses members only, so prediction imports nothing of
training; each kind's training side (``utils/kinds/``) names its member."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from utils.core.config import ConfigError, from_mapping
from utils.core.log import first_line
from utils.core.runtime import Precision
from utils.data.boxes import hflip_xyxy
from utils.ensemble.fusion import MemberPrediction
from utils.ensemble.manifest import MANIFEST_FILE, ManifestError, entry_files, load_state_dict_file
from utils.nets.models import WeightsError

Detections = list[tuple[np.ndarray, np.ndarray]]  # per source: (XYXY_NORM boxes (n, 4), scores (n,))


def model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W)`` -> float ``(B, 3, H, W)`` in [0, 1], grey replicated to three channels: the
    eval presets' output, what every model takes (each normalises inside, as its trunk wants)."""
    return images.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)


def with_flipped(per_image: list[Detections], flipped: list[Detections]) -> list[Detections]:
    """Each image's sources plus its mirror image's sources with the boxes flipped back."""
    return [own + [(hflip_xyxy(b, 1.0), s) for b, s in mirror] for own, mirror in zip(per_image, flipped)]


class Member:
    """One manifest model's folds, loaded for prediction. ``predict(images, tta, precision,
    with_opacity_map)`` takes uint8 ``(B, S, S)`` images on the device at ``input_size`` and returns one
    :class:`~utils.ensemble.fusion.MemberPrediction` for the batch: a detector's boxes per image (one source per
    fold and flip), a classifier's probabilities, or both; the predictor merges it with
    :func:`~utils.ensemble.fusion.add_member_prediction` and never asks what kind it is."""

    kind: ClassVar[str]  # the "kind" of the manifest entries it loads: its kind's name
    has_opacity_map: bool = False  # whether ``with_opacity_map`` gives maps
    # Its kind's config schema: the manifest's copy of the training config is read through it (types,
    # ranges, known keys), so a damaged manifest is one line naming the model and the key. None (a
    # plugin's choice): the stored mapping as it is.
    config_class: ClassVar[type | None] = None
    # Keys absent from manifests written before they existed -> the value that was then the only behaviour.
    legacy_defaults: ClassVar[dict] = {}

    def __init__(self, name: str, spec: dict, weights_dir: Path, device: torch.device):
        self.name = name
        self.where = f"{Path(weights_dir) / MANIFEST_FILE}: model {name!r}"
        self.folds, self.files, self.input_size = entry_files(weights_dir, name, spec)
        self.config = self.stored_config(spec.get("config", {}))
        self.device = device

    def stored_config(self, stored):
        """The manifest's copy of the training config, checked by :attr:`config_class`."""
        if self.config_class is None:
            return stored
        if not isinstance(stored, dict):
            raise ManifestError(f"{self.where}: 'config' must be an object, got {type(stored).__name__}")
        try:
            return from_mapping(self.config_class, {**self.legacy_defaults, **stored}, f"{self.where} config")
        except ConfigError as err:
            raise ManifestError(str(err)) from None

    def fold_network(self, build: Callable[[], torch.nn.Module], path: Path,
                     load: Callable[[torch.nn.Module, dict, Path], object] | None = None) -> torch.nn.Module:
        """``build()`` (the network the stored config describes, random weights) with fold file ``path``'s
        weights (``load(network, state, path)``, else an exact ``load_state_dict``), in eval mode on the
        device. A config that builds no network, or weights that do not fit it (another arch, head or
        width), is a ManifestError naming the manifest, the model and the file."""
        state = load_state_dict_file(path)
        try:
            network = build()
            if load is None:
                network.load_state_dict(state)
            else:
                load(network, state, path)
        except (RuntimeError, WeightsError, ValueError, KeyError) as err:
            arch = getattr(self.config, "arch", None)
            why = first_line(err) or type(err).__name__
            raise ManifestError(f"{self.where}: {path} does not fit the network its config builds"
                                f"{f' (arch {arch!r})' if arch else ''}: {why}") from None
        return network.to(self.device).eval()

    def predict(self, images: torch.Tensor, tta: bool, precision: Precision,
                with_opacity_map: bool = False) -> MemberPrediction:
        raise NotImplementedError

    def uses_tta(self, config) -> bool:
        """Whether the ensemble's settings (``EnsembleConfig``) ask for this member's test-time views: a
        detector's mirror image (``tta_hflip``)."""
        return config.tta_hflip

    def set_channels_last(self, enabled: bool) -> bool:
        """Keep the folds' weights channels-last (``enabled``) or contiguous; convolutions then run in
        that layout (faster on tensor cores for some models: measured by ``infer/benchmark.py
        inference --compare-channels-last``). Returns whether this member's models support it."""
        layout = torch.channels_last if enabled else torch.contiguous_format
        for model in self.models:
            model.to(memory_format=layout)
        return True
