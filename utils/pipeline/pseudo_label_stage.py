"""Pseudo-labelling: round one's ensemble, fold by fold, labels unlabelled radiographs as training data
for round two (``train/pseudo_label.py``, train_all's ``pseudo`` stage); the rules and the leak checks
are :mod:`utils.data.pseudo_label_rules`'s."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from utils.core.files import check_not_an_input, check_not_inside, write_json_atomic
from utils.data.decoding_cache import HEADERS_FILE, DecodedImage, decode_files, image_path, read_decoded
from utils.data.images_to_predict import find_test_images
from utils.data.pseudo_label_rules import (
    PSEUDO_LABELS_FILE,
    PseudoConfig,
    PseudoLabelError,
    Thresholds,
    check_disjoint,
    check_not_training_content,
    merge_meta,
    pseudo_rows,
    resolve_thresholds,
    select_labels,
)
from utils.data.training_table import read_meta
from utils.ensemble.assemble import assemble_submission
from utils.ensemble.config import ensemble_config
from utils.ensemble.fusion import submission_probabilities
from utils.ensemble.manifest import read_manifest
from utils.prediction.predictor import Ensemble
from utils.scoring.evaluation import fused_predictions, run_oof, submission_ids
from utils.scoring.metric import (
    best_f1_threshold,
    class_detections,
    ground_truth_from_table,
    lowest_threshold_at_precision,
)

log = logging.getLogger(__name__)


def out_of_fold_thresholds(run_dir: Path, config: PseudoConfig, manifest: dict) -> Thresholds:
    """The config's thresholds, null ones chosen by their rules on round one's out-of-fold ensemble
    predictions (fused and blended as the manifest's ensemble settings say: what labels the images)."""
    if config.none_threshold is not None and config.box_threshold is not None:
        return resolve_thresholds(config, None, None)
    _, oof, rows = run_oof(run_dir)
    ensemble = ensemble_config(manifest)
    submission = submission_ids(rows)
    detections = class_detections(assemble_submission(fused_predictions(oof, rows, ensemble), submission, ensemble),
                                  ground_truth_from_table(rows))
    def choose(rule: str, found):
        return lowest_threshold_at_precision(found, config.min_precision) if rule == "precision" \
            else best_f1_threshold(found)

    return resolve_thresholds(config, choose(config.none_rule, detections["none"]),
                              choose(config.box_rule, detections["opacity"]))


def labelling_folds(manifest: dict) -> list[int]:
    """The folds every model of the manifest has: each labels the images for its own round two."""
    folds = None
    for spec in manifest["models"].values():
        folds = set(spec["folds"]) if folds is None else folds & set(spec["folds"])
    if not folds:
        raise PseudoLabelError("the models of the weights folder share no fold")
    return sorted(folds)


def ensemble_targets(predictions, config) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per readable image (``select_labels``' input) and the unreadable ones' reasons."""
    studies, nones = submission_probabilities(predictions, config)
    rows, failed = [], {}
    for p in predictions:
        if p.error is not None:
            failed[p.image_id] = p.error
            continue
        rows.append({"image_id": p.image_id, "study_id": p.study_id, "original_height": p.original_height,
                     "original_width": p.original_width, "study_probs": studies[p.study_id],
                     "none_prob": nones[p.image_id], "boxes": p.boxes, "scores": p.scores})
    return pd.DataFrame(rows), failed


def pseudo_label(config: PseudoConfig, run_dir: Path, images_dir: Path, out: Path, *, test_meta: Path | None = None,
                 train_dir: Path | None = None, config_path: Path | None = None, device: str | None = None,
                 batch_size: int | None = None, workers: int | None = None, progress: bool = True) -> dict:
    """Label the readable images of ``images_dir`` with each fold of round one's weights in ``run_dir``
    and write round two's prepared folder ``out`` (train/pseudo_label.py's help says what and why);
    returns the summary written to its pseudo_labels.json."""
    started = time.perf_counter()
    real_meta = run_dir / "prepared" / "meta.csv"
    table = read_meta(real_meta, 0)
    manifest = read_manifest(run_dir / "weights", must_exist=True)
    sizes = sorted(int(c.split("_", 1)[1]) for c in pd.read_csv(real_meta, nrows=0).columns if c.startswith("path_"))
    _, images = find_test_images(images_dir, test_meta)
    if not images:
        raise PseudoLabelError(f"{images_dir}: no image to pseudo-label")
    check_disjoint(table["image_id"], [i.image_id for i in images], [i.path for i in images],
                   [train_dir, run_dir / "prepared"])
    # Round one's files (its prepared folder, weights) and the images are never written over: --out
    # RUN/prepared would rewrite round one's meta.csv and headers.jsonl; nothing is written into them.
    for name in ("meta.csv", HEADERS_FILE, PSEUDO_LABELS_FILE):
        check_not_an_input(out / name, [run_dir / "prepared", run_dir / "weights", images_dir, test_meta,
                                        config_path])
    check_not_inside(out, [run_dir / "prepared", run_dir / "weights", images_dir, train_dir])
    # Every image decoded once, first: the PNGs round two trains on, and what tells a training image
    # under another name (header UIDs, a hash of the pixels) before any prediction.
    decode_start = time.perf_counter()
    known = {i.image_id: DecodedImage(i.image_id, i.study_id, "", i.study_id, i.original_height, i.original_width)
             for i in images if i.original_height}  # a resized copy's size; a DICOM gives its own
    decoded, failures = decode_files([i.path for i in images], out, sizes, workers or 1, progress,
                                     known)
    decode_seconds = time.perf_counter() - decode_start
    wanted = {i.image_id for i in images}
    decoded = [d for d in decoded if d.image_id in wanted]  # not an earlier run's leftovers in --out
    training, training_headers = read_decoded(run_dir / "prepared")
    check_not_training_content(decoded, training, table["image_id"], table["study_id"], training_headers)
    failed = {Path(path).stem: reason for path, reason in failures}
    prepared = {d.image_id for d in decoded}
    images = [i for i in images if i.image_id in prepared]
    if not images:
        raise PseudoLabelError(f"{images_dir}: not one image could be read ({len(failed)} unreadable)")
    thresholds = out_of_fold_thresholds(run_dir, config, manifest)
    log.info("pseudo-labelling %d images of %s: none above %.3f, %s; boxes above %.3f, %s; at most %s per image",
             len(images), images_dir, thresholds.none, thresholds.none_source, thresholds.box,
             thresholds.box_source, config.max_boxes or "every box")
    overrides = {"device": device} if device else None
    labelled, per_fold = [], {}
    predict_seconds = 0.0
    for fold in labelling_folds(manifest):
        fold_start = time.perf_counter()
        with Ensemble(run_dir / "weights", overrides=overrides, folds=[fold]) as ensemble:
            predictions = ensemble.predict_paths(images, batch_size=batch_size, workers=workers,
                                                 progress=progress)
            targets, unreadable = ensemble_targets(predictions, ensemble.config)
        predict_seconds += time.perf_counter() - fold_start
        failed.update(unreadable)
        if targets.empty:
            raise PseudoLabelError(f"{images_dir}: not one image could be read ({len(unreadable)} unreadable)")
        selected = select_labels(targets, thresholds, config)
        labelled.append((fold, selected))
        per_fold[fold] = {"images": len(selected), "none": int((selected["boxes_known"]
                                                                & selected["label_boxes"].map(len).eq(0)).sum()),
                          "with_boxes": int(selected["label_boxes"].map(len).gt(0).sum()),
                          "boxes": int(selected["label_boxes"].map(len).sum()),
                          "no_box_label": int((~selected["boxes_known"]).sum())}
        log.info("fold %d labels: %s", fold, per_fold[fold])
    frames = []
    for fold, selected in labelled:
        selected = selected[selected["image_id"].isin(prepared)]
        paths = {size: [str(image_path(out, size, i).relative_to(out)) for i in selected["image_id"]]
                 for size in sizes}
        frames.append(pseudo_rows(selected, fold, paths))
    merged = merge_meta(real_meta, pd.concat(frames, ignore_index=True), out / "meta.csv")
    summary = {"images_dir": str(images_dir), "images": len(images), "unreadable": len(failed),
               "unreadable_examples": dict(sorted(failed.items())[:20]), "thresholds": thresholds.__dict__,
               "max_boxes": config.max_boxes, "study_targets": config.study_targets, "per_fold": per_fold,
               "rows": {"real": int((~merged["pseudo"].astype(bool)).sum()),
                        "pseudo": int(merged["pseudo"].astype(bool).sum())},
               "seconds": {"predict": round(predict_seconds, 1),
                           "prepare": round(decode_seconds, 1),
                           "total": round(time.perf_counter() - started, 1)}}
    write_json_atomic(out / PSEUDO_LABELS_FILE, summary)
    return summary
