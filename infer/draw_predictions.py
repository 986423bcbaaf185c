"""Draw a submission's opacity boxes on the radiographs beside the ground truth (a picture for people).

    python infer/draw_predictions.py --submission runs/demo/submission.csv --data-dir runs/demo/data
        --image-labels runs/demo/data/test_image_level.csv --study-labels runs/demo/data/test_study_level.csv
        --out runs/demo/predictions.png [--images 4] [--weights-dir runs/demo/weights | --min-score 0.2]

One row per image (the first ``--images`` images with true boxes, by id): on the left the radiograph
with its true boxes and study class, on the right the predicted boxes scoring at least
``--min-score`` with their scores, and the predicted study probabilities. Without ``--min-score``,
the weights folder's display threshold (the box score of best F1 out of fold, chosen by
infer/calibrate.py), else 0.2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from utils.core.config import float_in, int_in
from utils.core.report import figure
from utils.data.dicom import read_dicom
from utils.data.inputs import find_dicoms
from utils.data.labels import IMAGE_SUFFIX, STUDY_SUFFIX, load_image_labels, load_study_labels
from utils.data.submission import parse_prediction_string, read_submission
from utils.ensemble.config import ensemble_config
from utils.ensemble.fusion import display_threshold
from utils.ensemble.manifest import read_manifest

DISPLAY_SIZE = 512  # longer side of each panel, in pixels of the drawing


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submission", required=True, type=Path)
    parser.add_argument("--data-dir", required=True, type=Path, help="competition folder with test/")
    parser.add_argument("--image-labels", required=True, type=Path, help="truth in train_image_level.csv format")
    parser.add_argument("--study-labels", required=True, type=Path, help="truth in train_study_level.csv format")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--images", type=int_in(1, 1000), default=4, help="how many radiographs")
    parser.add_argument("--min-score", type=float_in(0.0, 1.0), default=None,
                        help="draw predicted boxes scoring at least this (default: the display threshold of "
                             "--weights-dir's manifest, else 0.2)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="the weights that made the submission")
    return parser


def draw(submission: pd.DataFrame, data_dir: Path, image_labels: pd.DataFrame, study_labels: pd.DataFrame,
         out: Path, n_images: int, min_score: float) -> Path:
    predicted = dict(zip(submission["id"].astype(str), submission["PredictionString"]))
    classes = dict(zip(study_labels["study_id"], study_labels["study_class"]))
    paths = {p.stem: p for p in find_dicoms(data_dir / "test")}
    chosen = image_labels[(image_labels["n_boxes"] > 0) & image_labels["image_id"].isin(set(paths))]
    chosen = chosen.sort_values("image_id").head(n_images)
    if chosen.empty:
        raise SystemExit(f"{data_dir / 'test'}: no image with true boxes to draw")
    with figure(len(chosen), 2, figsize=(9, 4.6 * len(chosen)), squeeze=False, dpi=80, path=out) as (_, axes):
        for (left, right), row in zip(axes, chosen.itertuples(index=False)):
            _draw_pair(left, right, row, paths, predicted, classes, min_score)
    return out


def _draw_pair(left, right, row, paths: dict, predicted: dict, classes: dict, min_score: float) -> None:
    """The truth (left) and the prediction (right) of one radiograph."""
    from matplotlib.patches import Rectangle

    radiograph = read_dicom(paths[row.image_id], DISPLAY_SIZE, keep_aspect=True)
    scale = radiograph.pixels.shape[0] / radiograph.original_height
    study = parse_prediction_string(predicted.get(f"{row.study_id}{STUDY_SUFFIX}", ""))
    best = max(study, key=lambda p: p.confidence).label if study else "?"
    probs = ", ".join(f"{p.label[:5]} {p.confidence:.2f}" for p in study)
    for axis in (left, right):
        axis.imshow(radiograph.pixels, cmap="gray")
        axis.axis("off")
    for x1, y1, x2, y2 in row.boxes * scale:
        left.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=2))
    left.set_title(f"{row.image_id}: truth, {classes.get(row.study_id, '?')}", fontsize=9)
    found = [p for p in parse_prediction_string(predicted.get(f"{row.image_id}{IMAGE_SUFFIX}", ""))
             if p.label == "opacity" and p.confidence >= min_score]
    for p in found:
        x1, y1, x2, y2 = (v * scale for v in p.box)
        right.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", linewidth=2))
        right.text(x1, y1 - 3, f"{p.confidence:.2f}", color="red", fontsize=8)
    right.set_title(f"predicted ({best}): {probs}", fontsize=8)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    study_labels = load_study_labels(args.study_labels)
    min_score = args.min_score
    if min_score is None:
        settings = read_manifest(args.weights_dir, must_exist=True) if args.weights_dir else {}
        min_score = display_threshold(ensemble_config(settings))
    path = draw(read_submission(args.submission), args.data_dir, load_image_labels(args.image_labels), study_labels,
                args.out, args.images, min_score)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
