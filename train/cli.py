"""Command-line pieces shared by the training scripts: config file, overrides, resume, logging."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "full.yaml"


def add_run_arguments(parser: argparse.ArgumentParser, section: str, default_out: str, resume: bool = True) -> None:
    """``--out``, ``--config``, ``--set KEY=VALUE ...``, ``--resume`` (unless ``resume`` is False: a
    trainer without the engine's exact resume) and ``--no-progress``."""
    parser.add_argument("--out", type=Path, default=Path(default_out), help="run folder")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"YAML with a '{section}' section (default: train/configs/full.yaml)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys, e.g. --set epochs=2 image_size=128")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
