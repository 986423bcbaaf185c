"""The one logging setup of every command-line entry point (training, prediction, the web app)."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """INFO and above to stderr with time, level and logger name (a no-op when already configured)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)


def first_line(err: BaseException) -> str:
    """An exception's message up to its first line break (torch's unpickling errors run to a page)."""
    text = str(err)
    return text.splitlines()[0] if text else ""
