"""Train everything, in order, into one run folder: what ``make train-all`` and ``make demo`` run.

    python train/train_all.py --data-dir SIIM_DIR --out runs/full [--config train/configs/full.yaml]
        [--nih-dir NIH_DIR] [--rsna-dir RSNA_DIR] [--set SECTION.KEY=VALUE ...] [--from-stage NAME] [--to-stage NAME]
        [--kinds KIND ...] [--start-from WEIGHTS_DIR] [--resume] [--pseudo-images TEST_DIR [--pseudo-test-meta TABLE]]

The config is resolved once (the recipe, this script's options, ``--set``; every section checked and
every file it names) into OUT/resolved_config.yaml, and every stage reads that file. Stages (each is the
stage's own script, run as a child process):

    prepare   train/prepare.py        --out OUT/prepared (every size the models use; the competition's
                                       DICOM folder or a resized copy, recognised by its contents)
    backbone  train/train_backbone.py --out OUT/backbone (skipped without --nih-dir: then the trunks
                                       start from the config's ``backbone`` value)
    <kind>    train/train_kind.py     --kind <kind> --out OUT/<kind>: every registered kind in the
                                       registry's order: frcnn (with --rsna-dir: --set pretrain_rsna=RSNA_DIR),
                                       yolo, study, then the entry points' (utils/core/plugins.py)
    evaluate  infer/evaluate.py       --out OUT/report (the CV report; writes the config's ensemble
                                       settings into the manifest)
    calibrate infer/calibrate.py      --out OUT/report (the ensemble's settings chosen out of fold and
                                       written into the manifest; ``calibrate.enabled: false`` skips it)
    pseudo    train/pseudo_label.py   --out OUT/round2/prepared (only with --pseudo-images: round one's
                                       ensemble labels those unlabelled images, each fold for its own round
                                       two; the config's ``pseudo`` section says how)
    round2    train/train_all.py      --out OUT/round2 (only with --pseudo-images): every kind again on the
                                       real and pseudo-labelled images, then the CV report and calibration
                                       on real labels only; OUT/round2/weights is the final weights folder

Every model registers its folds in OUT/weights/manifest.json, usable as ``--weights-dir`` of
``infer/make_submission.py``. ``--from-stage`` restarts at a stage after a failure (earlier
outputs are kept); ``--to-stage`` stops after one (``--to-stage study``: no CV report); ``--kinds``
trains only some kinds; ``--start-from`` fine-tunes an earlier weights folder (each engine kind's
folds start from its model's weights of the same fold); ``--resume`` lets the engine stages continue
from their folds' ``last.pt`` (after a crash, or to add folds in a later session: ``--set
'study.folds=[0]'``, then ``'study.folds=[0,1]' --resume`` trains fold 1 and only predicts fold 0 again).
Stage times go to OUT/train_all.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.core.config import ConfigError
from utils.core.files import OverwriteError, check_not_inside, describe_write_failure, is_write_failure
from utils.kinds.registry import KINDS
from utils.pipeline.cli import DEFAULT_CONFIG, configure_logging
from utils.pipeline.train_all import (
    STAGES,
    check_config,
    run_stages,
    split_overrides,
    stage_commands,
    write_run_config,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="competition folder (DICOMs) or a resized copy of it (train/<id>.jpg|png, meta.csv), "
                             "with the label CSVs")
    parser.add_argument("--out", required=True, type=Path, help="run folder for every stage")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML with every stage's section")
    parser.add_argument("--nih-dir", type=Path, default=None, help="NIH ChestX-ray14 folder for the backbone")
    parser.add_argument("--rsna-dir", type=Path, default=None,
                        help="RSNA Pneumonia folder for Faster R-CNN pre-training")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a stage's config key, e.g. --set frcnn.epochs=2 'study.folds=[0]'")
    parser.add_argument("--from-stage", choices=STAGES, default=STAGES[0], help="start at this stage")
    parser.add_argument("--to-stage", choices=STAGES, default=STAGES[-1], help="stop after this stage")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), metavar="KIND",
                        help=f"train only these model kinds (default: all, {', '.join(KINDS)}); the others' "
                             "stages are skipped and the CV report and calibration use the kinds trained")
    parser.add_argument("--start-from", type=Path, default=None, metavar="WEIGHTS_DIR",
                        help="each kind that can (the engine's) starts every fold from this weights folder's model "
                             "of the same fold instead of its config's trunk: fine-tuning an earlier run")
    parser.add_argument("--resume", action="store_true",
                        help="the engine stages (NIH backbone, study, Faster R-CNN, engine plugins) continue from "
                             "their folds' last.pt: a crashed run, or more folds in a later session (a finished fold "
                             "is predicted again, not trained)")
    parser.add_argument("--pseudo-images", type=Path, default=None,
                        help="unlabelled test folder (DICOMs, or a resized copy with --pseudo-test-meta): after round "
                             "one, pseudo-label it and train round two on real + pseudo-labelled images")
    parser.add_argument("--pseudo-test-meta", type=Path, default=None,
                        help="a resized copy's test image -> study table (test_meta.csv)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    try:
        # Every stage writes under --out: never inside a folder the run reads (its files are the data).
        check_not_inside(args.out, [args.data_dir, args.nih_dir, args.rsna_dir, args.pseudo_images])
        overrides = split_overrides(args.overrides)
        configs = check_config(args.config, overrides, args)  # once: --start-from's weights are read here
        commands = stage_commands(args, overrides, configs)
    except (ConfigError, OverwriteError) as err:
        raise SystemExit(f"error: {err}") from None
    if STAGES.index(args.to_stage) < STAGES.index(args.from_stage):
        raise SystemExit(f"error: --to-stage {args.to_stage} comes before --from-stage {args.from_stage}")
    try:
        write_run_config(args, configs)
    except OSError as err:  # the destination's fault (a full disk): nothing has run yet
        if not is_write_failure(err):
            raise
        raise SystemExit(f"error: {describe_write_failure(err)}") from None
    return run_stages(args.out, commands, args.from_stage, args.to_stage, args.kinds)


if __name__ == "__main__":
    sys.exit(main())
