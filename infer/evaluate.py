"""The cross-validation report of a training run: every model's out-of-fold predictions scored with the
competition metric, alone and fused as the ensemble fuses them, beside the trivial baselines.

    python infer/evaluate.py --run-dir runs/full --out runs/full/report [--weights-dir runs/full/weights]
        [--config train/configs/full.yaml] [--set KEY=VALUE ...]

Reads RUN/prepared/meta.csv, RUN/{study,frcnn,yolo}/oof_predictions.csv and RUN/backbone/eval_test.json
(whichever exist). Scores on the images of the folds that every model predicted:

- backbone: mean test AUC over the 14 NIH findings;
- study classifier: study mAP, none AP; each detector: opacity AP@0.5;
- ensemble: the models' outputs combined with the ``ensemble`` config section through the
  predictor's own function (:func:`utils.ensemble.fusion.combine_image`, then ``assemble_submission``; without
  test-time flips: the out-of-fold predictions have none), scored as a whole submission (final mAP);
  ``infer/calibrate.py`` then chooses those settings out of fold;
- baselines: class prior with all ``none``, and the prior plus one fixed box per lung.

Writes cv_report.json, cv_report.md, pr_curves.png and loss_curves.png to --out. With
--weights-dir, stores the ensemble section in the weights manifest (how to predict with them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from utils.core.config import DEFAULT_CONFIG, ConfigError, load_section, parse_overrides
from utils.core.files import check_not_an_input, run_inputs, write_json_atomic, write_text_atomic
from utils.core.log import configure_logging
from utils.ensemble.config import ENSEMBLE_SECTION, EnsembleConfig
from utils.ensemble.manifest import register_ensemble
from utils.scoring.evaluation import evaluate_run, markdown_report, plot_loss_curves, plot_pr_curves

log = logging.getLogger("evaluate")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path, help="train_all.py's run folder")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RUN/report)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="store the ensemble settings in its manifest")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"YAML with an '{ENSEMBLE_SECTION}' section")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override ensemble keys, e.g. --set wbf_iou_thr=0.6")
    parser.add_argument("--no-progress", action="store_true", help="accepted for symmetry with the stages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    out = args.out or args.run_dir / "report"
    try:
        inputs = run_inputs(args.run_dir, out, args.config, args.weights_dir)
        # never over the run's own files (--out RUN/prepared)
        for name in ("cv_report.json", "cv_report.md", "pr_curves.png", "loss_curves.png"):
            check_not_an_input(out / name, inputs)
        config = load_section(args.config, ENSEMBLE_SECTION, EnsembleConfig, parse_overrides(args.overrides))
        report, submissions, truth = evaluate_run(args.run_dir, config)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_report(report)
    write_json_atomic(out / "cv_report.json", report)
    write_text_atomic(out / "cv_report.md", text)
    plot_pr_curves(submissions, truth, out / "pr_curves.png")
    plot_loss_curves(args.run_dir, out / "loss_curves.png")
    if args.weights_dir is not None:
        register_ensemble(args.weights_dir, asdict(config))
        log.info("ensemble settings stored in %s", args.weights_dir / "manifest.json")
    print(text)
    print(f"report: {out / 'cv_report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
