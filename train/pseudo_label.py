"""Pseudo-label unlabelled radiographs with a round-one run's ensemble, as training data for round two.

    python train/pseudo_label.py --run-dir runs/real256 --images ../shared/siim-256
        --test-meta ../shared/siim-labels/test_meta.csv --out runs/real256/round2/prepared
        [--config train/configs/real256.yaml] [--set none_threshold=0.6 max_boxes=2]
        [--train-dir ../shared/siim-256/train] [--device cuda] [--batch-size 16] [--workers 4]

--images is any test folder the predictor reads (the competition's: test DICOMs + sample_submission.csv;
or a resized copy: test/<image_id>.jpg|png, meta.csv with the original sizes, and --test-meta for the
studies). Each fold of the run's weights labels every readable image for that fold's round two
(utils/data/pseudo_label_rules.py: the rules, the thresholds chosen out of fold where the config's ``pseudo`` section
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
import sys
from pathlib import Path

from utils.core.config import (
    ConfigError,
    batch_size_argument,
    device_argument,
    load_section,
    parse_overrides,
    worker_count,
)
from utils.data.pseudo_label_rules import SECTION, PseudoConfig, PseudoLabelError
from utils.ensemble.manifest import ManifestError
from utils.pipeline.cli import DEFAULT_CONFIG, configure_logging
from utils.pipeline.pseudo_label_stage import pseudo_label


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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    out = args.out or args.run_dir / "round2" / "prepared"
    try:
        config = load_section(args.config, SECTION, PseudoConfig, parse_overrides(args.overrides))
        summary = pseudo_label(config, args.run_dir, args.images, out, test_meta=args.test_meta,
                               train_dir=args.train_dir, config_path=args.config, device=args.device,
                               batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress)
    except (ConfigError, PseudoLabelError, ManifestError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"pseudo-labelled {summary['rows']['pseudo']} rows ({summary['images']} images, {summary['unreadable']} "
          f"unreadable) -> {out / 'meta.csv'}; thresholds {summary['thresholds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
