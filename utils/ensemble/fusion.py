"""Fusing box predictions (models x folds x test-time flips) and blending the "none" and "negative" signals.

:func:`combine_image` is the one way an image's model outputs become its prediction: the predictor
(test images), ``infer/evaluate.py`` and ``infer/calibrate.py`` (out-of-fold predictions) all call
it, with the settings of :class:`EnsembleConfig` (the manifest's ``ensemble`` section).

Boxes here are XYXY_NORM (fractions of the original image), which is what ensemble-boxes expects.
ensemble-boxes prints and calls ``exit()`` on lists of unequal length or an unknown ``conf_type``
and lets NaN scores through; in a Kaggle kernel that ends the run without a submission. So every
input is checked by :func:`check_box_lists` first, and a problem raises :class:`FusionInputError`
naming the list and the reason.

The blending (the last section): an image's "none" and a study's "negative" are weighted means of the
classifier's outputs and the boxes' "no opacity" (:func:`submission_probabilities`), the same for the
submission, the out-of-fold report, the calibration and the web app.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from utils.core.interrupt import dies_with_this_process
from utils.data.boxes import NORM_TOLERANCE, as_boxes, clip_xyxy, valid_box_mask
from utils.data.labels import STUDY_CLASSES
from utils.ensemble.config import WBF_CONF_TYPES, EnsembleConfig


class FusionInputError(ValueError):
    """Inputs that ensemble-boxes would crash on (or silently mis-fuse); says which list and why."""


def check_box_lists(boxes_list: Sequence, scores_list: Sequence, weights: Sequence[float] | None = None,
                    ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Validated copies of per-source XYXY_NORM boxes ``(n_i, 4)`` and scores ``(n_i,)``.

    Raises :class:`FusionInputError` for: different numbers of box and score lists or weights, a
    box array that is not ``(n, 4)``, lengths that differ within a source, non-finite boxes or
    scores, scores outside [0, 1], coordinates outside [0, 1] by more than rounding, negative or
    all-zero weights. Coordinates within rounding of the range are clipped; boxes of zero width or
    height are dropped (with their scores). Returns ``(boxes, scores, weights)``.
    """
    if len(boxes_list) != len(scores_list):
        raise FusionInputError(f"{len(boxes_list)} box lists but {len(scores_list)} score lists")
    weights = np.ones(len(boxes_list)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(weights) != len(boxes_list):
        raise FusionInputError(f"{len(weights)} weights for {len(boxes_list)} box lists")
    if len(weights) and (not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0):
        raise FusionInputError(f"weights must be finite, non-negative and not all zero: {weights.tolist()}")
    boxes_out, scores_out = [], []
    for k, (boxes, scores) in enumerate(zip(boxes_list, scores_list)):
        raw = np.asarray(boxes, dtype=np.float64)
        if raw.size == 0:
            raw = raw.reshape(0, 4)
        if raw.ndim != 2 or raw.shape[1] != 4:
            raise FusionInputError(f"source {k}: boxes must have shape (n, 4), got {raw.shape}")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(raw):
            raise FusionInputError(f"source {k}: {len(raw)} boxes but {len(scores)} scores")
        if not np.isfinite(raw).all():
            raise FusionInputError(f"source {k}: non-finite box coordinates")
        if not np.isfinite(scores).all() or ((scores < 0) | (scores > 1)).any():
            raise FusionInputError(f"source {k}: scores must be finite and within [0, 1]")
        if ((raw < -NORM_TOLERANCE) | (raw > 1 + NORM_TOLERANCE)).any():
            raise FusionInputError(f"source {k}: box coordinates outside [0, 1] (not XYXY_NORM?): "
                                   f"min {raw.min():.4g}, max {raw.max():.4g}")
        clipped = clip_xyxy(raw, 1.0, 1.0)
        keep = valid_box_mask(clipped)
        boxes_out.append(clipped[keep])
        scores_out.append(scores[keep])
    return boxes_out, scores_out, weights


def fuse_boxes(boxes_list: Sequence, scores_list: Sequence, weights: Sequence[float] | None = None, *,
               iou_thr: float = 0.55, skip_box_thr: float = 0.0, conf_type: str = "avg",
               max_boxes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted boxes fusion (ensemble-boxes) of several sources' XYXY_NORM boxes of one image, one
    class: ``(boxes (m, 4), scores (m,))``, highest score first, at most ``max_boxes``.

    A source is one model, fold and test-time flip; ``weights[i]`` is source ``i``'s weight in the
    fused coordinates and scores. Inputs are checked by :func:`check_box_lists` first.
    """
    from ensemble_boxes import weighted_boxes_fusion

    if conf_type not in WBF_CONF_TYPES:
        raise FusionInputError(f"conf_type {conf_type!r} is not one of {WBF_CONF_TYPES}")
    if not 0.0 < iou_thr <= 1.0 or not 0.0 <= skip_box_thr <= 1.0:
        raise FusionInputError(f"need 0 < iou_thr <= 1 and 0 <= skip_box_thr <= 1, got {iou_thr}, {skip_box_thr}")
    boxes_list, scores_list, weights = check_box_lists(boxes_list, scores_list, weights)
    if sum(len(s) for s in scores_list) == 0:
        return as_boxes([]), np.zeros(0)
    labels_list = [np.zeros(len(s)) for s in scores_list]
    with warnings.catch_warnings():
        # Checked above; what remains are its notes on boxes we already clipped.
        warnings.simplefilter("ignore", UserWarning)
        boxes, scores, _ = weighted_boxes_fusion([b.tolist() for b in boxes_list], [s.tolist() for s in scores_list],
                                                 [x.tolist() for x in labels_list], weights=weights.tolist(),
                                                 iou_thr=iou_thr, skip_box_thr=skip_box_thr, conf_type=conf_type)
    boxes, scores = as_boxes(boxes), np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:max_boxes]
    return clip_xyxy(boxes[order], 1.0, 1.0), scores[order].clip(0.0, 1.0)


def blend_none(signals: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """The image's "none" probability: the weighted mean of the available ``signals`` (each a
    probability that the image has no opacity, or None when missing); None when no signal with a
    positive weight is available."""
    if len(signals) != len(weights):
        raise ValueError(f"{len(signals)} signals but {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError(f"none weights must be non-negative, got {list(weights)}")
    pairs = [(float(s), float(w)) for s, w in zip(signals, weights) if s is not None and w > 0]
    if not pairs:
        return None
    return sum(s * w for s, w in pairs) / sum(w for _, w in pairs)


# ----------------------------------------------------------------------------- combining the members

Source = tuple[np.ndarray, np.ndarray]  # one model, fold and flip: XYXY_NORM boxes (n, 4), scores (n,)
DEFAULT_DISPLAY_THRESHOLD = 0.2


def display_threshold(config: EnsembleConfig) -> float:
    """The box score from which people are shown boxes: the manifest's calibrated one, else 0.2."""
    return DEFAULT_DISPLAY_THRESHOLD if config.display_threshold is None else float(config.display_threshold)


@dataclass
class MemberOutputs:
    """What the models said about one image, before they are combined: per detector its box sources
    (one per fold and flip; out of fold, one), per classifier its study probabilities (4,) and none."""

    boxes: dict[str, list[Source]] = field(default_factory=dict)
    classifiers: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)
    opacity_map: np.ndarray | None = None  # the first member's that gives one (not combined)


@dataclass
class MemberPrediction:
    """What one member says about a batch of images: the one output type of every member's ``predict``.
    A detector fills ``boxes`` (per image, one source per fold and flip); a classifier ``study_probs``
    ``(B, 4)`` and ``none_probs`` ``(B,)`` (a NaN none: no prediction for that image); ``opacity_maps``
    ``(B, h, w)`` where asked for and available. A kind may fill any of them."""

    boxes: list[list[Source]] | None = None
    study_probs: np.ndarray | None = None
    none_probs: np.ndarray | None = None
    opacity_maps: np.ndarray | None = None


def add_member_prediction(images: Sequence[MemberOutputs], name: str, prediction: MemberPrediction) -> None:
    """Add member ``name``'s :class:`MemberPrediction` of a batch to each image's :class:`MemberOutputs`:
    the one place member outputs are merged (the predictor, the out-of-fold report, the benchmark)."""
    for k, image in enumerate(images):
        if prediction.boxes is not None:
            image.boxes[name] = list(prediction.boxes[k])
        if prediction.none_probs is not None and not np.isnan(prediction.none_probs[k]):
            image.classifiers[name] = (np.asarray(prediction.study_probs[k], dtype=np.float64),
                                       float(prediction.none_probs[k]))
        if prediction.opacity_maps is not None and image.opacity_map is None:
            image.opacity_map = prediction.opacity_maps[k]


@dataclass
class CombinedImage:
    """One image's combined prediction: fused XYXY_NORM boxes, highest score first, and the classifiers'
    weighted mean study probabilities and none (None without a classifier)."""

    boxes: np.ndarray
    scores: np.ndarray
    study_probs: np.ndarray | None = None
    none_prob: float | None = None


def fuse_detectors(outputs: MemberOutputs, config: EnsembleConfig) -> Source:
    """The detectors' boxes of one image as one set: each detector's folds and flips fused
    (``member_wbf_iou_thr``, equal weights), its scores raised to ``score_powers[name]``, then the
    detectors fused with their ``model_weights`` and the ``wbf_*`` settings. A detector of weight 0 is
    left out; a single detector passes through unfused (boxes under ``wbf_skip_box_thr`` dropped), so a
    member alone scores what it scores on its own."""
    members, weights = [], []
    for name, sources in outputs.boxes.items():
        weight = config.model_weights.get(name, 1.0)
        if weight <= 0:
            continue
        if len(sources) == 1:
            boxes, scores = check_box_lists([sources[0][0]], [sources[0][1]])[:2]
            boxes, scores = boxes[0], scores[0]
        else:
            boxes, scores = fuse_boxes([b for b, _ in sources], [s for _, s in sources],
                                       iou_thr=config.member_wbf_iou_thr, skip_box_thr=0.0, conf_type="avg")
        members.append((boxes, scores ** config.score_powers.get(name, 1.0)))
        weights.append(weight)
    if not members:
        return as_boxes([]), np.zeros(0)
    if len(members) == 1:
        boxes, scores = members[0]
        keep = scores >= config.wbf_skip_box_thr
        order = np.argsort(-scores[keep], kind="stable")
        return boxes[keep][order], scores[keep][order]
    return fuse_boxes([b for b, _ in members], [s for _, s in members], weights, iou_thr=config.wbf_iou_thr,
                      skip_box_thr=config.wbf_skip_box_thr, conf_type=config.wbf_conf_type)


def combine_image(outputs: MemberOutputs, config: EnsembleConfig, fused: Source | None = None) -> CombinedImage:
    """The one way the members' outputs of an image become its prediction (the predictor, the
    out-of-fold report and the calibration all call it): the classifiers' weighted mean, the detectors
    fused (:func:`fuse_detectors`, or ``fused`` when the caller already has it), each box rescored by
    (1 - none) ** ``box_none_power`` and at most ``max_boxes`` kept."""
    study = none = None
    weighted = [(config.model_weights.get(name, 1.0), probs, value)
                for name, (probs, value) in outputs.classifiers.items()]
    weighted = [item for item in weighted if item[0] > 0]
    if weighted:
        total = sum(w for w, _, _ in weighted)
        study = sum(w * np.asarray(p, dtype=np.float64) for w, p, _ in weighted) / total
        none = float(sum(w * float(v) for w, _, v in weighted) / total)
    boxes, scores = fused if fused is not None else fuse_detectors(outputs, config)
    if config.box_none_power > 0 and none is not None:
        scores = scores * (1.0 - min(max(none, 0.0), 1.0)) ** config.box_none_power
    return CombinedImage(boxes[: config.max_boxes], scores[: config.max_boxes], study, none)


def combine_images(outputs: Sequence[MemberOutputs], config: EnsembleConfig) -> list[CombinedImage]:
    """:func:`combine_image` of each image of a batch: one task of the fusion processes."""
    return [combine_image(o, config) for o in outputs]


def resolve_fusion_workers(config: EnsembleConfig, device_type: str) -> int:
    """``config.fusion_workers``, or for None: 0 on the CPU, else a quarter of the cores (1 to 4)."""
    if config.fusion_workers is not None:
        return config.fusion_workers
    return 0 if device_type == "cpu" else min(4, max(1, (os.cpu_count() or 1) // 4))


class InlineFusion(Executor):
    """Runs each task at once in the caller: the pool of ``fusion_workers=0``."""

    def submit(self, function, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as err:  # delivered by future.result(), as a process pool's would be
            future.set_exception(err)
        return future


def _import_fusion() -> None:
    import ensemble_boxes  # noqa: F401 - numba's import takes about half a second


def fusion_pool(workers: int) -> Executor:
    """An executor for :func:`combine_images`: ``workers`` spawned processes (a fresh interpreter: the
    parent may hold CUDA and thread pools a fork would copy), or :class:`InlineFusion` for 0. The
    processes start at once, importing the fusion library, while the first batches are decoded."""
    if workers == 0:
        return InlineFusion()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=dies_with_this_process())
    for _ in range(workers):
        pool.submit(_import_fusion)
    return pool


# --- The none and negative blending: from the combined images to the submission's probabilities ---

NEGATIVE = STUDY_CLASSES.index("negative")
# A study none of whose images could be read: every class equally likely (no information).
UNINFORMED_STUDY = np.full(len(STUDY_CLASSES), 1.0 / len(STUDY_CLASSES))
UNINFORMED_NONE = 0.5


@dataclass
class ImagePrediction:
    """What the ensemble says about one image. ``boxes`` XYXY_NORM (of the original image) with
    ``scores``, highest first; ``study_probs`` (4,) and ``none_prob`` from the study classifier
    (None without one, or when the image could not be read: ``error``)."""

    image_id: str
    study_id: str
    original_height: int
    original_width: int
    boxes: np.ndarray
    scores: np.ndarray
    study_probs: np.ndarray | None = None
    none_prob: float | None = None
    error: str | None = None
    opacity_map: np.ndarray | None = None  # (h, w) in [0, 1] over the image, when asked and available


def no_box_probability(prediction: ImagePrediction) -> float | None:
    """One minus the image's best fused opacity score (1 without any box): the detectors' view of
    "no opacity here"; None when the image could not be read."""
    if prediction.error is not None:
        return None
    return float(1.0 - prediction.scores.max()) if len(prediction.scores) else 1.0


def image_none_probability(prediction: ImagePrediction, study_negative: float | None,
                           config: EnsembleConfig) -> float:
    """The image's none probability: the weighted mean (:func:`utils.ensemble.fusion.blend_none`) of the study
    classifier's none output, its study's negative probability (classifier) and
    :func:`no_box_probability`; uninformed (0.5) without any signal."""
    blended = blend_none([prediction.none_prob, study_negative, no_box_probability(prediction)],
                         [config.none_classifier_weight, config.none_study_weight, config.none_boxes_weight])
    return UNINFORMED_NONE if blended is None else blended


def _study_means(predictions: Sequence[ImagePrediction]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per study: the mean classifier probabilities of its images, and the mean no-box probability."""
    probs: dict[str, list[np.ndarray]] = {}
    no_box: dict[str, list[float]] = {}
    for p in predictions:
        if p.study_probs is not None:
            probs.setdefault(p.study_id, []).append(p.study_probs)
        value = no_box_probability(p)
        if value is not None:
            no_box.setdefault(p.study_id, []).append(value)
    return ({k: np.mean(v, axis=0) for k, v in probs.items()}, {k: float(np.mean(v)) for k, v in no_box.items()})


def study_row_probabilities(classifier: np.ndarray | None, no_box: float | None,
                            config: EnsembleConfig) -> np.ndarray:
    """A study's four probabilities: the classifier's (uniform without one), with "negative" the
    weighted mean of the classifier's negative and the images' mean no-box probability (a study
    whose images show no opacity is likely negative). The four are ranked per class by the metric,
    so they are not renormalised."""
    probs = np.array(UNINFORMED_STUDY if classifier is None else classifier, dtype=np.float64)
    negative = blend_none([None if classifier is None else float(classifier[NEGATIVE]), no_box],
                          [config.negative_classifier_weight, config.negative_boxes_weight])
    if negative is not None:
        probs[NEGATIVE] = negative
    return probs


def submission_probabilities(predictions: Sequence[ImagePrediction],
                             config: EnsembleConfig) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """``(per study its four probabilities, per image its none)`` as :func:`assemble_submission` writes
    them: :func:`study_row_probabilities` of the mean over the study's readable images, and
    :func:`image_none_probability` (an unreadable image's from its study's other images). A study
    with no readable image is absent (the submission gives it :data:`UNINFORMED_STUDY`)."""
    classifier, no_box = _study_means(predictions)
    studies = {study_id: study_row_probabilities(classifier.get(study_id), no_box.get(study_id), config)
               for study_id in {*classifier, *no_box}}
    nones = {}
    for prediction in predictions:
        study = classifier.get(prediction.study_id)
        nones[prediction.image_id] = image_none_probability(
            prediction, None if study is None else float(study[NEGATIVE]), config)
    return studies, nones
