"""Ctrl-C that stops a prediction run at once, whatever its helper processes are doing.

Python's own exit after a ``KeyboardInterrupt`` joins the DataLoader's workers and its queues' feeder
threads; on a loaded machine that has taken over a minute (a known class of PyTorch DataLoader
shutdown hangs), during which the run looks alive. Nothing is lost by not waiting: every output is
written to a temporary file and renamed (:mod:`utils.core.files`), so an interrupted run leaves no
half-written file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from typing import NoReturn

CHILD_GRACE_SECONDS = 2.0


def exit_interrupted() -> NoReturn:
    """Stop this process's multiprocessing children (terminate, then kill after a short grace), flush
    the standard streams and die of SIGINT as an uncaught Ctrl-C would, so the parent sees the usual
    status; no interpreter shutdown, no joins."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(CHILD_GRACE_SECONDS)
        if child.is_alive():
            child.kill()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or a broken pipe: nothing more to say
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(128 + signal.SIGINT)  # not reached where SIGINT's default action ends the process
