"""Ctrl-C that stops a prediction run at once, whatever its helper processes are doing; and helper
processes that die with the process that started them, however it ends.

Python's own exit after a ``KeyboardInterrupt`` joins the DataLoader's workers and its queues' feeder
threads; on a loaded machine that has taken over a minute (a known class of PyTorch DataLoader
shutdown hangs), during which the run looks alive. Nothing is lost by not waiting: every output is
written to a temporary file and renamed (:mod:`utils.core.files`), so an interrupted run leaves no
half-written file."""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
from typing import Callable, NoReturn

CHILD_GRACE_SECONDS = 2.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, *_worker_id) -> None:
    """Run first in a helper process (a pool's initializer, a DataLoader's ``worker_init_fn``): the
    kernel kills it when ``parent_pid``, the process that started it, dies, even of SIGKILL, which runs
    no cleanup (before, a killed prepare left its pool workers waiting forever and a killed
    make_submission its ~1 GB workers for minutes). Linux only; elsewhere nothing changes."""
    if not sys.platform.startswith("linux") or parent_pid == os.getpid():  # (called in the parent itself)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the call above: nothing would signal us
        os._exit(1)


def dies_with_this_process() -> Callable[..., None]:
    """:func:`die_with_parent` bound to this process, as a picklable initializer of the helpers it starts."""
    return functools.partial(die_with_parent, os.getpid())


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
