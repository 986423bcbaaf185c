"""From image predictions to the submission: each image's and study's "none" and "negative" (blended in
:mod:`utils.ensemble.fusion`), the boxes mapped back to the original pixels, one row per id of
the sample submission (:func:`assemble_submission`), and the whole test split predicted, counted and
written (:func:`write_ensemble_submission`). The predictor, the out-of-fold report and the calibration
all build their submissions here, so the ensemble is scored as it submits.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, Sequence

import pandas as pd

from utils.data.boxes import denormalize_xyxy
from utils.data.dicom import NO_DECODER, unreadable_group
from utils.data.images_to_predict import find_test_images
from utils.data.labels import IMAGE_SUFFIX, STUDY_CLASSES, STUDY_SUFFIX
from utils.data.submission import (
    SubmissionError,
    check_output_path,
    image_prediction_string,
    sample_image_ids,
    sample_problems,
    study_prediction_string,
    write_submission,
)
from utils.ensemble.config import EnsembleConfig
from utils.ensemble.fusion import UNINFORMED_NONE, UNINFORMED_STUDY, ImagePrediction, submission_probabilities

if TYPE_CHECKING:
    from pathlib import Path

    import torch


class EnsemblePredictor(Protocol):
    """What predicts a test split: :class:`utils.prediction.predictor.Ensemble` on one device,
    :class:`utils.prediction.sharding.ShardedEnsemble` on several. A context manager (``close`` stops its
    helper processes)."""

    weights_dir: Path
    config: EnsembleConfig
    devices: tuple[torch.device, ...]
    load_seconds: float | None

    def predict_paths(self, paths: Sequence, *, batch_size: int | None = None, workers: int | None = None,
                      progress: bool = True, on_batch=None) -> list[ImagePrediction]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "EnsemblePredictor": ...

    def __exit__(self, *exc) -> None: ...

def assemble_submission(predictions: Sequence[ImagePrediction], sample: pd.DataFrame,
                        config: EnsembleConfig) -> pd.DataFrame:
    """One row per id of ``sample`` in its order. Studies and images' none:
    :func:`submission_probabilities` (uniform for a study without a readable image); images: fused boxes
    in original pixels plus their none; an image without a prediction gets ``none`` only."""
    studies, nones = submission_probabilities(predictions, config)
    by_image = {p.image_id: p for p in predictions}
    rows = []
    for identifier in sample["id"].astype(str):
        if identifier.endswith(STUDY_SUFFIX):
            probs = studies.get(identifier[: -len(STUDY_SUFFIX)], UNINFORMED_STUDY)
            rows.append(study_prediction_string(dict(zip(STUDY_CLASSES, probs))))
            continue
        prediction = by_image.get(identifier[: -len(IMAGE_SUFFIX)])
        if prediction is None:
            rows.append(image_prediction_string([], [], UNINFORMED_NONE, 1.0, 1.0))
            continue
        none = nones[prediction.image_id]
        if prediction.error is not None or not len(prediction.scores):
            rows.append(image_prediction_string([], [], none, 1.0, 1.0))
            continue
        width, height = float(prediction.original_width), float(prediction.original_height)
        rows.append(image_prediction_string(denormalize_xyxy(prediction.boxes, width, height), prediction.scores,
                                            none, width, height))
    return pd.DataFrame({"id": sample["id"].astype(str).tolist(), "PredictionString": rows})


# The reason of a sample submission's image without a file (or, in a resized copy, without its original size).
MISSING_IMAGE = "not found: no file for it in the test folder, or no original size in a resized copy's meta.csv"


class TooManyUnreadableError(RuntimeError):
    """More test images unreadable than ``max_unreadable_share``: no submission was written."""


def unreadable_summary(failed: dict[str, str], images: int) -> dict:
    """The unreadable images counted: ``count``, ``share`` of ``images`` and ``groups`` by kind of reason
    (:func:`utils.data.dicom.unreadable_group`), each with its count, up to three image ids and, for a missing
    decoder, what pydicom needs installed."""
    groups: dict[str, dict] = {}
    for image_id, reason in failed.items():
        group = groups.setdefault(unreadable_group(reason), {"count": 0, "examples": [], "install": None})
        group["count"] += 1
        if len(group["examples"]) < 3:
            group["examples"].append(image_id)
        if reason.startswith(NO_DECODER):
            group["install"] = reason.split(": ", 1)[-1]
    ordered = dict(sorted(groups.items(), key=lambda item: -item[1]["count"]))
    return {"count": len(failed), "share": len(failed) / max(images, 1), "images": images, "groups": ordered}


def describe_unreadable(summary: dict) -> str:
    """One line: ``unreadable: 3 of 1263 images (0.2%): truncated 2; not a DICOM file 1``."""
    head = f"unreadable: {summary['count']} of {summary['images']} images ({100 * summary['share']:.1f}%)"
    if not summary["count"]:
        return head
    parts = [f"{name} {group['count']}" + (f" (install: {group['install']})" if group["install"] else "")
             for name, group in summary["groups"].items()]
    return f"{head}: {'; '.join(parts)}"


def write_ensemble_submission(ensemble: EnsemblePredictor, data_dir, out, *, batch_size: int | None = None,
                              workers: int | None = None, progress: bool = True, test_table=None,
                              allow_unreadable: bool = False) -> dict:
    """Predict the test split of ``data_dir`` (:func:`find_test_images`) with ``ensemble`` (an
    :class:`Ensemble`, or :class:`utils.prediction.sharding.ShardedEnsemble` for several devices) and write the
    validated submission to ``out``. Returns a summary: rows, images, unreadable images with their
    reasons and :func:`unreadable_summary`, seconds, device. More unreadable images than the config's
    ``max_unreadable_share`` raise :class:`TooManyUnreadableError` before anything is written, unless
    ``allow_unreadable``."""
    check_output_path(out)
    sample, images = find_test_images(data_dir, test_table)
    problems = sample_problems(sample)
    if problems:
        raise SubmissionError(problems, where=f"{data_dir} sample submission")
    started = time.perf_counter()
    predictions = ensemble.predict_paths(images, batch_size=batch_size, workers=workers, progress=progress)
    failed = {p.image_id: p.error for p in predictions if p.error is not None}
    # The sample's images that could not be reached at all get fallback rows too, and count as unreadable.
    wanted = sample_image_ids(sample)
    failed.update((image_id, MISSING_IMAGE) for image_id in sorted(set(wanted) - {i.image_id for i in images}))
    counted = unreadable_summary(failed, max(len(wanted), len(images)))
    limit = ensemble.config.max_unreadable_share
    if counted["share"] > limit and not allow_unreadable:
        raise TooManyUnreadableError(
            f"{describe_unreadable(counted)}; that is more than max_unreadable_share {100 * limit:g}%, so no "
            f"submission was written to {out}. Fix the reason (a missing decoder is a package to install), or "
            f"write it anyway with --allow-unreadable (each unreadable image gets a fallback row)")
    submission = assemble_submission(predictions, sample, ensemble.config)
    write_submission(submission, out, sample=sample)
    seconds = time.perf_counter() - started
    return {"out": str(out), "rows": len(submission), "images": len(images), "unreadable": failed,
            "unreadable_summary": counted, "seconds": seconds, "seconds_per_image": seconds / max(len(images), 1),
            "device": ",".join(str(d) for d in ensemble.devices)}
