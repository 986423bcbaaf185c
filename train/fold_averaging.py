"""What averaging the study model's fold models adds, measured on a fold that none of them saw.

    python train/fold_averaging.py --prepared runs/prep/meta.csv --held-out-fold 4 --out runs/averaging \
        [--inner-folds 0 1 2 3] [--config train/configs/real256.yaml] [--set KEY=VALUE ...] [--no-progress]

At test time the submission averages the probabilities of every fold model (the study member of
``utils/prediction/predictor.py``); the out-of-fold CV scores each model alone on its own fold, so it cannot say
what the average adds. Here one fold (``--held-out-fold``) is left out of everything: the study
model is trained on the other folds' images only, one model per inner fold (``train/train_kind.py --kind study``
on ``OUT/inner/meta.csv``, that table without the held-out fold), and every model, then the mean of
their probabilities over each subset of 1, 2, ... of them, predicts the held-out fold. Beside them:
the constant class prior of the training images.

The inner folds can be trained over several sessions: each call resumes (``--resume``), so
``--inner-folds 0 1`` now and ``--inner-folds 0 1 2 3`` later trains only folds 2 and 3. Writes
``OUT/held_out_fold<k>.csv`` (model k's predictions of the held-out fold), ``OUT/fold_averaging.json``
and ``OUT/fold_averaging.md`` (the table of docs/results.md).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.config import ConfigError, int_in, load_section, parse_overrides
from utils.core.files import write_csv_atomic, write_json_atomic, write_text_atomic
from utils.core.report import markdown_table
from utils.data.labels import STUDY_CLASSES
from utils.data.predictions import read_predictions, write_predictions
from utils.kinds.registry import KINDS
from utils.pipeline.cli import configure_logging, train_kind
from utils.scoring.classification import mean_predictions, prior_predictions, study_classifier_scores
from utils.training.checkpoints import BEST_CHECKPOINT, load_checkpoint

log = logging.getLogger("fold_averaging")
KIND = KINDS["study"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="meta.csv written by train/prepare.py")
    parser.add_argument("--held-out-fold", required=True, type=int_in(0, 99), help="the fold no model sees")
    parser.add_argument("--inner-folds", nargs="+", type=int_in(0, 99), default=None,
                        help="the inner folds to train and average (default: every other fold)")
    parser.add_argument("--out", type=Path, default=Path("runs/fold-averaging"))
    parser.add_argument("--config", type=Path, default=Path("train/configs/real256.yaml"))
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="the study section's overrides (e.g. epochs=1 for a quick try)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def write_inner_meta(meta_csv: Path, held_out_fold: int, out: Path) -> tuple[Path, list[int]]:
    """meta.csv without the held-out fold's rows (image paths made absolute), and the folds left."""
    table = pd.read_csv(meta_csv, dtype=str, keep_default_na=False)
    folds = sorted(int(f) for f in table["fold"].unique() if int(f) >= 0)
    if held_out_fold not in folds:
        raise SystemExit(f"{meta_csv}: no fold {held_out_fold} (folds: {folds})")
    inner = table[table["fold"].astype(int) != held_out_fold].copy()
    for column in (c for c in inner.columns if c.startswith("path_")):
        inner[column] = [str((meta_csv.parent / p).resolve()) for p in inner[column]]
    write_csv_atomic(inner, out / "meta.csv")
    return out / "meta.csv", [f for f in folds if f != held_out_fold]


def train_inner(inner_meta: Path, folds: list[int], args) -> None:
    argv = ["--prepared", str(inner_meta), "--out", str(args.out / "inner"), "--config", str(args.config),
            "--resume", "--set", *args.overrides, f"folds={folds}"]
    if args.no_progress:
        argv.append("--no-progress")
    if train_kind("study", argv) != 0:
        raise SystemExit("the study model failed on the inner folds (train/train_kind.py --kind study)")


def held_out_predictions(fold: int, frame: pd.DataFrame, config, args) -> pd.DataFrame:
    """Inner fold ``fold``'s model (the kept checkpoint) on every held-out image, with the config's views;
    read back from OUT/held_out_fold<k>.csv when an earlier call wrote it."""
    path = args.out / f"held_out_fold{fold}.csv"
    if path.is_file():
        return read_predictions(path)
    model = KIND.untrained_model(config)
    model.load_state_dict(load_checkpoint(args.out / "inner" / f"fold{fold}" / BEST_CHECKPOINT)["model"])
    rows = KIND.predict_frame(model, frame, fold, config, progress=not args.no_progress)
    write_predictions(rows, path)
    return rows


def _mean(values) -> float | None:
    """The mean of APs, None where the class has no positive among the scored images."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def score_row(label: str, n_models: int, scores: list[dict]) -> dict:
    """The mean (and spread) over ``scores`` of the study mAP, each class's AP and the none AP."""
    maps = [s["study_map"] for s in scores]
    return {"averaged": label, "models": n_models, "subsets": len(scores), "study_map": float(np.mean(maps)),
            "study_map_min": float(np.min(maps)), "study_map_max": float(np.max(maps)),
            **{c: _mean(s["ap"][c] for s in scores) for c in STUDY_CLASSES},
            "none_ap": _mean(s["none_ap"] for s in scores)}


def averaging_rows(predictions: dict[int, pd.DataFrame], table: pd.DataFrame, train: pd.DataFrame) -> list[dict]:
    """The prior, then for m = 1 .. n models the mean scores over every subset of m of them."""
    held_out = table.drop_duplicates("image_id")[["image_id", "study_id"]]
    rows = [score_row("constant class prior (baseline)", 0,
                      [study_classifier_scores(prior_predictions(held_out, train), table)])]
    folds = sorted(predictions)
    for m in range(1, len(folds) + 1):
        scores = [study_classifier_scores(mean_predictions([predictions[f] for f in subset], "study"), table)
                  for subset in itertools.combinations(folds, m)]
        rows.append(score_row("one model" if m == 1 else f"mean of {m} models", m, scores))
    return rows


def markdown(rows: list[dict], args) -> str:
    lines = markdown_table(
        ("averaged", "models", "subsets", "study mAP", "min", "max", *STUDY_CLASSES, "none AP"),
        [(r["averaged"], r["models"], r["subsets"], r["study_map"], r["study_map_min"], r["study_map_max"],
          *(r[c] for c in STUDY_CLASSES), r["none_ap"]) for r in rows], numeric_from=3)
    command = (f"python train/fold_averaging.py --prepared {args.prepared} --held-out-fold {args.held_out_fold} "
               f"--out {args.out} --config {args.config}")
    if args.inner_folds:
        command += " --inner-folds " + " ".join(map(str, args.inner_folds))
    if args.overrides:
        command += " --set " + " ".join(args.overrides)
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    inner_meta, others = write_inner_meta(args.prepared, args.held_out_fold, args.out / "inner")
    folds = sorted(args.inner_folds) if args.inner_folds else others
    if unknown := sorted(set(folds) - set(others)):
        raise SystemExit(f"--inner-folds {unknown}: not among the inner folds {others}")
    try:
        config = load_section(args.config, KIND.name, KIND.config_class,
                              parse_overrides([*args.overrides, f"folds={folds}"]))
    except ConfigError as err:
        raise SystemExit(str(err)) from None
    train_inner(inner_meta, folds, args)
    table = KIND.load_table(args.prepared, config)  # with the boxes when the segmentation head needs them
    held_out = table[table["fold"] == args.held_out_fold]
    predictions = {fold: held_out_predictions(fold, held_out, config, args) for fold in folds}
    rows = averaging_rows(predictions, held_out, table[table["fold"] != args.held_out_fold])
    write_json_atomic(args.out / "fold_averaging.json",
                      {"held_out_fold": args.held_out_fold, "inner_folds": folds, "images": len(held_out),
                       "studies": int(held_out["study_id"].nunique()), "rows": rows})
    text = markdown(rows, args)
    write_text_atomic(args.out / "fold_averaging.md", text)
    log.info("fold averaging on held-out fold %d (%d images):\n%s", args.held_out_fold, len(held_out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
