"""Pseudo-label unlabelled radiographs with a round-one run's ensemble, as training data for round two.

    python train/pseudo_label.py --run-dir runs/real256 --images ../shared/siim-256
        --test-meta ../shared/siim-labels/test_meta.csv --out runs/real256/round2/prepared
        [--config train/configs/real256.yaml] [--set none_threshold=0.6 max_boxes=2]
        [--train-dir ../shared/siim-256/train] [--device cuda] [--batch-size 16] [--workers 4]

--images is any test folder the predictor reads (the competition's: test DICOMs + sample_submission.csv;
or a resized copy: test/<image_id>.jpg|png, meta.csv with the original sizes, and --test-meta for the
studies). Each fold of the run's weights labels every readable image for that fold's round two
(utils/data/pseudo.py: the rules, the thresholds chosen out of fold where the config's ``pseudo`` section
leaves them null, and why this is leak-free). Writes to --out: images_<size>/ (the images prepared at
every size of the run's meta.csv), meta.csv (the run's rows, then the pseudo-labelled ones marked
``pseudo``) and pseudo_labels.json (thresholds, counts, times). Refuses, before any prediction, images
that are training images (shared ids, files inside --train-dir or the run's prepared folder, a DICOM
header naming a training image or study, or a training image's pixels under another name: a hash of
the decoded pixels), and an --out that would write over round one's files. train/train_all.py
runs it as its ``pseudo`` stage with ``--pseudo-images``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from utils.core.config import (
    ConfigError,
    batch_size_argument,
    device_argument,
    load_section,
    parse_overrides,
    worker_count,
)
from utils.core.files import check_not_an_input, check_not_inside, write_json_atomic
from utils.data.prepare import HEADERS_FILE, DecodedImage, decode_files, image_path, read_decoded, read_meta
from utils.data.pseudo import (
    PSEUDO_LABELS_FILE,
    SECTION,
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
from utils.data.test_images import find_test_images
from utils.ensemble.assemble import assemble_submission
from utils.ensemble.fusion import ensemble_config, submission_probabilities
from utils.ensemble.manifest import ManifestError, read_manifest
from utils.ensemble.predictor import Ensemble
from utils.scoring.evaluation import fused_predictions, run_oof, submission_ids
from utils.scoring.metric import (
    best_f1_threshold,
    class_detections,
    ground_truth_from_table,
    lowest_threshold_at_precision,
)
from utils.training.cli import DEFAULT_CONFIG, configure_logging

log = logging.getLogger("pseudo_label")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path,
                        help="round one's train_all run folder (prepared/meta.csv, weights/, out-of-fold files)")
    parser.add_argument("--images", required=True, type=Path,
                        help="test folder to pseudo-label (DICOMs or a resized copy)")
    parser.add_argument("--test-meta", type=Path, default=None, help="a resized copy's image -> study table")
    parser.add_argument("--out", type=Path, default=None,
                        help="prepared folder of round two (default: RUN/round2/prepared)")
    parser.add_argument("--train-dir", type=Path, default=None,
                        help="the training images' folder (refused if --images lie inside it)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"YAML with a '{SECTION}' section")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override pseudo keys, e.g. --set none_threshold=0.6 max_boxes=2")
    parser.add_argument("--device", type=device_argument, default=None,
                        help="prediction device (default: the manifest's ensemble device)")
    parser.add_argument("--batch-size", type=batch_size_argument, default=None, help="images per model call")
    parser.add_argument("--workers", type=worker_count, default=None, help="decoding processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return parser


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


def run(args) -> dict:
    started = time.perf_counter()
    config = load_section(args.config, SECTION, PseudoConfig, parse_overrides(args.overrides))
    run_dir = args.run_dir
    out = args.out or run_dir / "round2" / "prepared"
    real_meta = run_dir / "prepared" / "meta.csv"
    table = read_meta(real_meta, 0)
    manifest = read_manifest(run_dir / "weights", must_exist=True)
    sizes = sorted(int(c.split("_", 1)[1]) for c in pd.read_csv(real_meta, nrows=0).columns if c.startswith("path_"))
    _, images = find_test_images(args.images, args.test_meta)
    if not images:
        raise PseudoLabelError(f"{args.images}: no image to pseudo-label")
    check_disjoint(table["image_id"], [i.image_id for i in images], [i.path for i in images],
                   [args.train_dir, run_dir / "prepared"])
    # Round one's files (its prepared folder, weights) and the images are never written over: --out
    # RUN/prepared would rewrite round one's meta.csv and headers.jsonl; nothing is written into them.
    for name in ("meta.csv", HEADERS_FILE, PSEUDO_LABELS_FILE):
        check_not_an_input(out / name, [run_dir / "prepared", run_dir / "weights", args.images, args.test_meta,
                                        args.config])
    check_not_inside(out, [run_dir / "prepared", run_dir / "weights", args.images, args.train_dir])
    # Every image decoded once, first: the PNGs round two trains on, and what tells a training image
    # under another name (header UIDs, a hash of the pixels) before any prediction.
    decode_start = time.perf_counter()
    known = {i.image_id: DecodedImage(i.image_id, i.study_id, "", i.study_id, i.original_height, i.original_width)
             for i in images if i.original_height}  # a resized copy's size; a DICOM gives its own
    decoded, failures = decode_files([i.path for i in images], out, sizes, args.workers or 1, not args.no_progress,
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
        raise PseudoLabelError(f"{args.images}: not one image could be read ({len(failed)} unreadable)")
    thresholds = out_of_fold_thresholds(run_dir, config, manifest)
    log.info("pseudo-labelling %d images of %s: none above %.3f, %s; boxes above %.3f, %s; at most %s per image",
             len(images), args.images, thresholds.none, thresholds.none_source, thresholds.box,
             thresholds.box_source, config.max_boxes or "every box")
    overrides = {"device": args.device} if args.device else None
    labelled, per_fold = [], {}
    predict_seconds = 0.0
    for fold in labelling_folds(manifest):
        fold_start = time.perf_counter()
        with Ensemble(run_dir / "weights", overrides=overrides, folds=[fold]) as ensemble:
            predictions = ensemble.predict_paths(images, batch_size=args.batch_size, workers=args.workers,
                                                 progress=not args.no_progress)
            targets, unreadable = ensemble_targets(predictions, ensemble.config)
        predict_seconds += time.perf_counter() - fold_start
        failed.update(unreadable)
        if targets.empty:
            raise PseudoLabelError(f"{args.images}: not one image could be read ({len(unreadable)} unreadable)")
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
    summary = {"images_dir": str(args.images), "images": len(images), "unreadable": len(failed),
               "unreadable_examples": dict(sorted(failed.items())[:20]), "thresholds": thresholds.__dict__,
               "max_boxes": config.max_boxes, "study_targets": config.study_targets, "per_fold": per_fold,
               "rows": {"real": int((~merged["pseudo"].astype(bool)).sum()),
                        "pseudo": int(merged["pseudo"].astype(bool).sum())},
               "seconds": {"predict": round(predict_seconds, 1),
                           "prepare": round(decode_seconds, 1),
                           "total": round(time.perf_counter() - started, 1)}}
    write_json_atomic(out / PSEUDO_LABELS_FILE, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    try:
        summary = run(args)
    except (ConfigError, PseudoLabelError, ManifestError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    out = args.out or args.run_dir / "round2" / "prepared"
    print(f"pseudo-labelled {summary['rows']['pseudo']} rows ({summary['images']} images, {summary['unreadable']} "
          f"unreadable) -> {out / 'meta.csv'}; thresholds {summary['thresholds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
