"""Choose the ensemble's fusion and blending settings out of fold, and report them on data the choice
never saw.

    python infer/calibrate.py --run-dir runs/full [--weights-dir runs/full/weights] [--out runs/full/report]
        [--config train/configs/full.yaml] [--set KEY=VALUE ...] [--ensemble-set KEY=VALUE ...] [--no-progress]

From a run's out-of-fold predictions (the CV report's), a seeded coordinate search over a small grid
(``SEARCH_GRID``) maximises final mAP: each detector's weight (0 drops it) and score power, the
weighted boxes fusion's IoU, skip threshold and confidence type, the rescoring of boxes by
(1 - none) ** p, and the weights of the none and negative blends. It starts from the best members
(the best detector's boxes and the best classifier's probabilities, unblended) or the config's
settings, whichever scores better, takes a change only when it adds ``min_gain``, and never takes one
that puts opacity AP under the best single detector's.

Honest by construction: with several out-of-fold folds it chooses on the others and reports on each;
with one, it splits that fold's patients in two seeded halves, chooses on one and reports on the other,
and the reverse. Every scored row of a reporting part comes from settings chosen without it; the
summary table is the mean over the reporting parts. The
settings written to the weights folder are searched on all out-of-fold images; where the chosen
settings lost to the best member on any reporting part, the best members are written instead, and
the report says so; below ``min_images`` out-of-fold images the config's settings are kept. The box
score of best F1 of the written settings becomes ``display_threshold`` (the web app, the drawings).

Writes calibration.md and calibration.json (with every setting tried and its scores) to --out
(default RUN/report); with --weights-dir, the chosen ``ensemble`` section (and a summary under
``calibration``) into its manifest.
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
from utils.scoring.calibration import CALIBRATE_SECTION, CalibrateConfig, calibrate_run, markdown_report
from utils.scoring.evaluation import load_oof

log = logging.getLogger("calibrate")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=Path, help="train_all.py's run folder")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: RUN/report)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="write the chosen settings into its manifest")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"YAML with '{ENSEMBLE_SECTION}' (the starting settings) and "
                             f"'{CALIBRATE_SECTION}' sections")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"override {CALIBRATE_SECTION} keys, e.g. --set seed=1 passes=1")
    parser.add_argument("--ensemble-set", dest="ensemble_overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"override {ENSEMBLE_SECTION} keys of the starting settings, e.g. "
                             "--ensemble-set tta_hflip=false")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    out = args.out or args.run_dir / "report"
    try:
        inputs = run_inputs(args.run_dir, out, args.config, args.weights_dir)
        # never over the run's own files (--out RUN/prepared)
        for name in ("calibration.json", "calibration.md"):
            check_not_an_input(out / name, inputs)
        config = load_section(args.config, ENSEMBLE_SECTION, EnsembleConfig, parse_overrides(args.ensemble_overrides))
        calibrate = load_section(args.config, CALIBRATE_SECTION, CalibrateConfig, parse_overrides(args.overrides))
        if not load_oof(args.run_dir):  # e.g. every model trained on all the data: nothing to choose on
            log.warning("%s: no out-of-fold predictions, nothing to calibrate on; the settings stay as they are",
                        args.run_dir)
            return 0
        deployed, report = calibrate_run(args.run_dir, config, calibrate, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_report(report)
    write_json_atomic(out / "calibration.json", report)
    write_text_atomic(out / "calibration.md", text)
    if args.weights_dir is not None:
        summary = {k: report[k] for k in ("deployed", "deployed_reason", "folds", "n_images", "seed")}
        summary["reporting_parts_map"] = {label: report["mean_of_reporting_parts"][label]["map"]
                                          for label in ("chosen", "best members (unblended)", "config's settings")}
        register_ensemble(args.weights_dir, asdict(deployed), calibration=summary)
        log.info("calibrated ensemble settings stored in %s", args.weights_dir / "manifest.json")
    print(text)
    print(f"report: {out / 'calibration.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
