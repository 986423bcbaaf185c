"""The ``ensemble`` section: how the trained models predict together (:class:`EnsembleConfig`), kept in the
weights manifest by training and read from there by every predictor (:func:`ensemble_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

from utils.core.config import (
    BatchSize,
    BoxCount,
    ConfigError,
    Fraction,
    FractionBelowOne,
    Weight,
    Workers,
    device_problems,
    from_mapping,
    short,
)
from utils.core.kind_names import canonical_name

ENSEMBLE_SECTION = "ensemble"  # its section in a config file and in a weights manifest
WBF_CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
Power = Annotated[float, Field(gt=0.0, le=100.0)]  # an exponent on scores in [0, 1]


@dataclass
class EnsembleConfig:
    """The ``ensemble`` section: how the trained models predict together (kept in the manifest by training)."""

    tta_hflip: bool = True
    """The detectors also predict the mirror image (boxes flipped back)."""
    # Manifests before 2026-12 had one switch for both: tta_hflip false there also means study_tta false.
    study_tta: bool = True
    """The study models' own test-time views (their study.tta_views); false: the image alone."""
    model_weights: dict[str, Weight] = field(default_factory=dict)
    """Per model name in the manifest (absent: 1.0): a detector's weight in the fusion across models, a
    classifier's in the mean of the classifiers; 0 leaves the model out (it is not even run)."""
    score_powers: dict[str, Power] = field(default_factory=dict)
    """Per detector name: its scores ** power before the fusion (absent: 1.0)."""
    member_wbf_iou_thr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.55
    """IoU above which one model's folds and flips are fused, before the models are (fixed: out of fold
    has one source)."""
    wbf_iou_thr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.55
    """IoU above which boxes of different models are fused."""
    wbf_skip_box_thr: FractionBelowOne = 0.001
    """Boxes scored below this are left out of the fusion."""
    wbf_conf_type: Literal[WBF_CONF_TYPES] = "avg"
    """How ensemble-boxes scores a fused box."""
    box_none_power: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    """Fused box scores * (1 - the classifier's none) ** power."""
    max_boxes: BoxCount = 100
    """Most fused boxes kept per image."""
    none_classifier_weight: Weight = 1.0
    """Image none = weighted mean of: the study classifier's none output (this weight), ..."""
    none_study_weight: Weight = 1.0
    """... its study's negative probability (this weight), ..."""
    none_boxes_weight: Weight = 1.0
    """... and 1 - the best fused opacity score (this weight); 0 leaves a signal out."""
    negative_classifier_weight: Weight = 1.0
    """Study negative = weighted mean of the classifier's negative (this weight) ..."""
    negative_boxes_weight: Weight = 1.0
    """... and its images' mean of 1 - the best fused opacity score (this weight)."""
    batch_size: BatchSize = 8
    """Images per model call."""
    workers: Workers = 2
    """DICOM decoding processes feeding the models."""
    fusion_workers: Workers | None = None
    """Processes fusing the boxes while the models predict the next batch; null: 0 on the CPU (the models
    already use every core), else a quarter of the cores, 1 to 4."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"
    """auto (fp16 on CUDA, off on CPU) | off | fp16 | bf16."""
    channels_last: bool = False
    """The torch models' weights channels-last (Member.set_channels_last; compare: benchmark.py inference
    --compare-channels-last)."""
    display_threshold: Fraction | None = None
    """Box score from which the web app and drawings show boxes (null: 0.2); infer/calibrate.py writes the
    F1-best one out of fold into the manifest. The submission keeps every box (the metric ranks them)."""
    max_unreadable_share: Fraction = 0.05
    """Share of test images the reader may refuse (each gets a fallback row) before make_submission fails
    without writing a submission (--allow-unreadable writes it anyway): a codec missing on the machine, not
    a few damaged files, is what a high share means."""

    def __post_init__(self):
        problems = device_problems(self.device)
        if problems:
            raise ValueError("; ".join(problems))
        # per-model settings written under a model's older name (utils.core.kind_names.LEGACY_NAMES)
        self.model_weights = {canonical_name(k): v for k, v in self.model_weights.items()}
        self.score_powers = {canonical_name(k): v for k, v in self.score_powers.items()}


def ensemble_config(manifest: dict, overrides: dict | None = None, source: str = "manifest") -> EnsembleConfig:
    """The manifest's ``ensemble`` section (defaults where it has none) with ``overrides`` on top. A
    section without ``study_tta`` (written before 2026-12) takes it from ``tta_hflip``, which switched both."""
    section = manifest.get(ENSEMBLE_SECTION, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source} [{ENSEMBLE_SECTION}]: expected an object of settings, got "
                          f"{type(section).__name__} {short(section)}")
    section = dict(section)
    if "study_tta" not in section and "tta_hflip" in section:
        section["study_tta"] = section["tta_hflip"]
    if overrides:  # checked alone first, so that a bad value given with --set or --config is named as theirs
        from_mapping(EnsembleConfig, dict(overrides), f"{source} [{ENSEMBLE_SECTION}] with overrides")
    return from_mapping(EnsembleConfig, {**section, **(overrides or {})}, f"{source} [{ENSEMBLE_SECTION}]")
