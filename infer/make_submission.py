"""Predict the competition's test split with the trained ensemble and write a validated submission.

    python infer/make_submission.py --data-dir DIR --weights-dir W --out submission.csv
        [--device auto|cpu|cuda | --devices cuda:0,cuda:1] [--batch-size N] [--workers N] [--config FILE]
        [--set KEY=VALUE ...]
    python infer/make_submission.py --data-dir RESIZED_DIR --test-meta test_meta.csv --weights-dir W --out ...

DIR is the competition folder (``test/<study>/<series>/<image>.dcm`` and ``sample_submission.csv``),
or, for a local dry run, a resized copy (``test/<image_id>.jpg|png`` and ``meta.csv`` with each image's
original ``dim0``/``dim1``) with ``--test-meta``, a table of its test images and their studies
(``imageid``, ``studyid``): the boxes are written in the original pixels either way;
W is a weights folder with its ``manifest.json`` (``runs/<run>/weights`` after ``train/train_all.py``).
The ensemble settings (TTA, fusion, none blending) come from the manifest's ``ensemble`` section;
``--config`` (a YAML with an ``ensemble`` section) and ``--set`` override them. One row per id of the
sample submission, in its order; an image the reader refuses is logged and gets a fallback row (no
boxes, ``none`` from its study's other images or 0.5; a study without a readable image gets uniform
probabilities). The last line counts the unreadable images by reason; above the ensemble's
``max_unreadable_share`` (5%) nothing is written and the exit status is 1, unless ``--allow-unreadable``.
``--devices cuda:0,cuda:1`` (Kaggle's T4 x2) shares the images out among the devices, one worker
process each, and gives the same submission as one device (``utils/prediction/sharding.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.core.config import (
    ConfigError,
    batch_size_argument,
    device_argument,
    load_yaml_section,
    parse_overrides,
    worker_count,
)
from utils.core.files import (
    OverwriteError,
    check_not_an_input,
    check_not_inside,
    describe_write_failure,
    is_write_failure,
    write_json_atomic,
)
from utils.core.interrupt import exit_interrupted
from utils.core.log import configure_logging
from utils.data.inputs import PreparationInputError
from utils.data.submission import SubmissionError
from utils.ensemble.assemble import TooManyUnreadableError, describe_unreadable, write_ensemble_submission
from utils.ensemble.config import ENSEMBLE_SECTION, ensemble_config
from utils.ensemble.manifest import ManifestError, named_files, read_manifest
from utils.prediction.predictor import Ensemble
from utils.prediction.sharding import ShardedEnsemble, ShardError, parse_devices

log = logging.getLogger("make_submission")
SHOWN_UNREADABLE = 20  # unreadable images listed one per line; the summary JSON has them all


def _device_list(text: str) -> list[str]:
    try:
        return parse_devices(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="competition folder (test/, sample_submission.csv)")
    parser.add_argument("--test-meta", type=Path, default=None,
                        help="resized copy only: table of the test images and their studies (imageid, studyid)")
    parser.add_argument("--weights-dir", required=True, type=Path, help="weights folder with manifest.json")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="where to write the submission")
    devices = parser.add_mutually_exclusive_group()
    devices.add_argument("--device", type=device_argument, default=None,
                         help="auto | cpu | cuda | cuda:N (default: the ensemble config's)")
    devices.add_argument("--devices", default=None, type=_device_list, metavar="D1,D2,...",
                         help="several devices at once, one worker each, e.g. cuda:0,cuda:1")
    parser.add_argument("--batch-size", type=batch_size_argument, default=None, help="images per model call")
    parser.add_argument("--workers", type=worker_count, default=None, help="DICOM decoding processes")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"YAML whose '{ENSEMBLE_SECTION}' section overrides the manifest's")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override ensemble keys, e.g. --set tta_hflip=false wbf_iou_thr=0.6")
    parser.add_argument("--allow-unreadable", action="store_true",
                        help="write the submission even when more images than max_unreadable_share are unreadable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    try:
        overrides = load_yaml_section(args.config, ENSEMBLE_SECTION) if args.config else {}
        overrides.update(parse_overrides(args.overrides))
        devices = args.devices or ([args.device] if args.device else [])
        if len(devices) == 1:
            overrides["device"] = devices[0]
        # The submission and its summary never replace a file they are made from (the manifest and every
        # file it names, the sample, a test image, the tables, the config), and are never written into the
        # weights or test folder; an earlier submission beside them may be replaced.
        manifest = read_manifest(args.weights_dir, must_exist=True)
        inputs = [*named_files(args.weights_dir, manifest), args.data_dir / "sample_submission.csv",
                  args.data_dir / "meta.csv", args.data_dir / "test", args.test_meta, args.config]
        for written in (args.out, args.out.parent / f"{args.out.stem}_summary.json"):
            check_not_an_input(written, inputs)  # also through a link from outside the folders below
            check_not_inside(written, [args.weights_dir], what="weights folder")
            check_not_inside(written, [args.data_dir / "test"], what="test image folder")
        config = ensemble_config(manifest, overrides, str(args.weights_dir / "manifest.json"))
        with (ShardedEnsemble(args.weights_dir, config, devices) if len(devices) > 1
              else Ensemble(args.weights_dir, config)) as ensemble:
            summary = write_ensemble_submission(ensemble, args.data_dir, args.out, batch_size=args.batch_size,
                                                workers=args.workers, progress=not args.no_progress,
                                                test_table=args.test_meta, allow_unreadable=args.allow_unreadable)
    except (ConfigError, ManifestError, FileNotFoundError, OverwriteError, PreparationInputError, SubmissionError,
            ShardError, TooManyUnreadableError) as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:  # the destination's fault (a full disk): one line; an earlier submission stays whole
        if not is_write_failure(err):
            raise
        raise SystemExit(f"error: {describe_write_failure(err)}; no submission was written (an earlier "
                         f"{args.out.name} is left as it was)") from None
    summary["load_seconds"] = ensemble.load_seconds
    unreadable = list(summary["unreadable"].items())
    for image_id, reason in unreadable[:SHOWN_UNREADABLE]:
        print(f"unreadable (fallback row): {image_id}: {reason}")
    if len(unreadable) > SHOWN_UNREADABLE:
        print(f"... and {len(unreadable) - SHOWN_UNREADABLE} more (all in {args.out.stem}_summary.json)")
    loaded = ("each worker loads its own models" if ensemble.load_seconds is None
              else f"models loaded in {ensemble.load_seconds:.1f} s")
    print(f"wrote {summary['out']}: {summary['rows']} rows for {summary['images']} images in "
          f"{summary['seconds']:.1f} s ({1000 * summary['seconds_per_image']:.0f} ms per image on "
          f"{summary['device']}; {loaded})")
    try:
        write_json_atomic(args.out.parent / f"{args.out.stem}_summary.json", summary)
    except OSError as err:  # the submission is written and valid: only its summary is lost, which says so
        if not is_write_failure(err):
            raise
        log.warning("%s; the summary was not written (the submission %s is complete and valid)",
                    describe_write_failure(err), args.out)
    print(describe_unreadable(summary["unreadable_summary"]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C on the command line: stop now, loader workers included (the notebook,
        exit_interrupted()     # which calls main, keeps Python's own KeyboardInterrupt)
