"""The study model's ablation: the same folds, seeds and recipe with one change at a time, scored out
of fold with the competition metric beside the constant-prior baseline.

    python train/study_ablation.py --prepared runs/real256/prepared/meta.csv \
        [--config train/configs/real256.yaml] [--out runs/study-ablation] [--variants plain seg ...]

Each variant of :data:`VARIANTS` is a ``train/train_kind.py --kind study`` run (``--set`` overrides on the
config's ``study`` section) into ``--out/<variant>``, predicting its held-out fold through the
identity view alone; a finished variant (its ``oof_scores.json`` present) is not trained again. Then
the best variant's fold weights predict the held-out fold again through each TTA view list of
:data:`TTA_ROWS`. Writes ``--out/ablation.json`` and ``--out/ablation.md`` (the table of the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from utils.core.config import load_section, parse_overrides
from utils.core.report import markdown_table, write_ablation
from utils.data.labels import STUDY_CLASSES
from utils.data.training_table import fold_split, select_folds
from utils.kinds.registry import KINDS
from utils.kinds.study.training import load_study_table
from utils.kinds.study.tta import EIGHT_VIEWS, FLIP, PLAIN
from utils.pipeline.cli import configure_logging, train_kind
from utils.scoring.classification import prior_predictions, study_classifier_scores
from utils.training.checkpoints import load_checkpoint

log = logging.getLogger("study_ablation")

SEG_WEIGHT = 0.5
EMA_DECAY = 0.997
# name -> (what it changes, --set overrides of the study section)
VARIANTS = {
    "plain": ("the recipe as it is", {}),
    "seg": (f"+ auxiliary opacity segmentation (seg_weight {SEG_WEIGHT})", {"seg_weight": SEG_WEIGHT}),
    "ema": (f"+ EMA of the weights (decay {EMA_DECAY})", {"ema_decay": EMA_DECAY}),
    "seg_ema": ("+ segmentation + EMA", {"seg_weight": SEG_WEIGHT, "ema_decay": EMA_DECAY}),
    "smooth": ("+ label smoothing 0.05", {"label_smoothing": 0.05}),
}
DEFAULT_VARIANTS = ("plain", "seg", "ema", "seg_ema")
TTA_ROWS = {"hflip": FLIP, "8 views": EIGHT_VIEWS}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="meta.csv written by train/prepare.py")
    parser.add_argument("--config", type=Path, default=Path("train/configs/real256.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/study-ablation"))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                        help=f"default: {' '.join(DEFAULT_VARIANTS)} (each about 23 min on 2 CPU cores)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for every variant (e.g. epochs=1 for a quick try)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def scores_row(name: str, change: str, scores: dict) -> dict:
    return {"variant": name, "change": change, "study_map": scores["study_map"],
            **{c: scores["ap"][c] for c in STUDY_CLASSES}, "none_ap": scores["none_ap"]}


def prior_row(oof: pd.DataFrame, table: pd.DataFrame) -> dict:
    """The constant class prior of the training images (every image alike) on the same held-out images."""
    rows = prior_predictions(oof.drop_duplicates("image_id"), table[~table["image_id"].isin(set(oof["image_id"]))])
    return scores_row("prior", "constant class prior (baseline)", study_classifier_scores(rows, table))


def run_variant(name: str, overrides: list[str], args) -> Path:
    out = args.out / name
    if (out / "oof_scores.json").is_file():
        log.info("%s: already finished in %s", name, out)
        return out
    argv = ["--prepared", str(args.prepared), "--out", str(out), "--config", str(args.config), "--resume",
            "--set", *overrides]
    if args.no_progress:
        argv.append("--no-progress")
    log.info("%s: train_kind --kind study %s", name, " ".join(argv))
    train_kind("study", argv)
    return out


def tta_rows(run: Path, variant_overrides: list[str], table: pd.DataFrame, args) -> list[dict]:
    """The run's fold weights predicting their held-out folds through each view list of TTA_ROWS."""
    kind = KINDS["study"]
    config = load_section(args.config, kind.name, kind.config_class, parse_overrides(variant_overrides))
    rows = []
    for label, views in TTA_ROWS.items():
        oof = []
        viewed = replace(config, tta_views=list(views), backbone="none")
        for fold in select_folds(table, config.folds, args.prepared):
            _, _, held_out = fold_split(table, fold, args.prepared)
            model = kind.build_model(viewed)
            model.load_state_dict(load_checkpoint(run / f"fold{fold}" / "best.pt")["model"])
            oof.append(kind.predict_frame(model, held_out, fold, viewed, progress=not args.no_progress))
        scores = study_classifier_scores(pd.concat(oof, ignore_index=True), table)
        rows.append(scores_row(f"{run.name} + TTA {label}", f"{len(views)} views: {', '.join(views)}", scores))
    return rows


def markdown(rows: list[dict], args) -> str:
    lines = markdown_table(("variant", "change", "study mAP", *STUDY_CLASSES, "none AP"),
                           [(row["variant"], row["change"], row["study_map"], *(row[c] for c in STUDY_CLASSES),
                             row["none_ap"]) for row in rows], numeric_from=2)
    command = f"python train/study_ablation.py --prepared {args.prepared} --config {args.config} --out {args.out}"
    if args.overrides:
        command += " --set " + " ".join(args.overrides)
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    common = [*args.overrides, f"tta_views={list(PLAIN)}"]
    table = load_study_table(args.prepared, 0, with_boxes=True)
    rows, finished = [], {}
    for name in args.variants:
        change, overrides = VARIANTS[name]
        variant_overrides = common + [f"{k}={v}" for k, v in overrides.items()]
        run = run_variant(name, variant_overrides, args)
        scores = json.loads((run / "oof_scores.json").read_text())
        rows.append(scores_row(name, change, scores))
        finished[name] = (run, variant_overrides)
    oof = pd.read_csv(finished[args.variants[0]][0] / "oof_predictions.csv", dtype={"image_id": str, "study_id": str})
    rows.insert(0, prior_row(oof, table))
    best = max(rows[1:], key=lambda row: row["study_map"])["variant"]
    rows += tta_rows(*finished[best], table, args)
    write_ablation(args.out, rows, markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
