"""The one logging setup of every command-line entry point (training, prediction, the web app)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """INFO and above to stderr with time, level and logger name (a no-op when already configured)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
