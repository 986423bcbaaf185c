"""Atomic file writes: the one way every stage writes an output that a killed run must not leave half-written;
and the lock that makes writers of one shared file (a weights folder's manifest) take turns."""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it is renamed over
    ``path`` (an atomic replace), otherwise it is removed and ``path`` is left as it was.

    The temporary name keeps ``path``'s suffix, so writers that choose the format by extension
    (OpenCV, matplotlib) work unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# Errors of the place written to, not of the data: a run stops on them (one line naming the path), it never
# skips the item it was writing.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO})


def is_write_failure(err: BaseException) -> bool:
    """An OSError of the destination (full disk, quota, permission, read-only or failing file system)."""
    return isinstance(err, OSError) and err.errno in WRITE_ERRNOS


def describe_write_failure(err: OSError, path=None) -> str:
    """One line: the path (the file an :func:`atomic_path` temporary stood for), the reason and the space
    left on its file system."""
    where = Path(path or err.filename or ".")
    where = where.with_name(re.sub(r"\.tmp-\d+(?=\.[^.]*$|$)", "", where.name))
    folder = next((p for p in (where, *where.parents) if p.exists()), Path("."))
    try:
        free = f"; {shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        free = ""
    return f"{where}: {err.strerror or err}{free}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder, pattern: str = "*") -> int:
    """Delete the temporary files (``<name>.tmp-<pid>.<suffix>``, :func:`atomic_path`) matching ``pattern``
    (a glob of the name before ``.tmp-``) that a run killed mid-write (SIGKILL: no cleanup) left in
    ``folder``; files of a live process are kept. Returns how many it deleted."""
    removed = 0
    for path in Path(folder).glob(f"{pattern}.tmp-*"):
        pid = path.stem.rpartition(".tmp-")[2]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def file_lock(path) -> Iterator[None]:
    """Holds an exclusive lock on ``PATH.lock`` for the block, so read-change-write cycles of ``path`` by
    several processes take turns instead of losing each other's changes. The kernel releases the lock
    when its holder exits or is killed, so a lock never outlives a killed run (the empty lock file stays)."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_folder(path) -> Iterator[Path]:
    """:func:`atomic_path` for a folder: the block fills a new temporary folder beside ``path``, which then
    takes ``path``'s place (the old folder moved aside, the new one renamed in, the old one deleted); on
    an error the temporary folder goes and ``path`` is left as it was. A killed run's temporaries are
    deleted by the next one (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, glob.escape(path.name))
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    previous = path.with_name(f"{path.name}.old.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            os.replace(path, previous)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def write_text_atomic(path, text: str) -> Path:
    """``path`` replaced by ``text`` in one step (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json_atomic(path, value) -> Path:
    """``value`` as indented JSON (and a final newline), written atomically."""
    import json

    return write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def write_csv_atomic(frame, path, **options) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given), written atomically."""
    options.setdefault("index", False)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **options)
    return Path(path)


class OverwriteError(ValueError):
    """An output path that is one of the run's own input files (the message names both)."""


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()  # follows links: a link to an input is that input
    except OSError:
        return None
    return info.st_dev, info.st_ino


def run_inputs(run_dir, out_dir, *others) -> list[Path]:
    """What a report over a run folder reads: every folder of the run but the report's own ``out_dir``
    (the prepared tables, each model's out-of-fold files), plus ``others`` (a config, the weights)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir).resolve()
    if not run_dir.is_dir():
        return [Path(o) for o in others if o is not None]
    folders = [p for p in sorted(run_dir.iterdir()) if p.is_dir() and p.resolve() != out_dir]
    return [*folders, *(Path(o) for o in others if o is not None)]


def check_not_an_input(out, inputs, option: str = "--out") -> None:
    """Raise :class:`OverwriteError` when ``out`` is, through any link or hard link, one of ``inputs``
    (files, or folders standing for every file under them). Checked before any work, because the
    atomic write would otherwise replace a weights manifest or a test image without a word."""
    out = Path(out)
    target = _file_key(out)
    if target is None:  # nothing there yet: it cannot be an input
        return
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        files = (p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
        for path in files:
            if _file_key(path) == target:
                raise OverwriteError(f"{option} {out} is an input of this run ({path}): refusing to overwrite it; "
                                     "give another path")


def check_not_inside(out, folders, option: str = "--out", what: str = "input folder") -> None:
    """Raise :class:`OverwriteError` when ``out`` is one of ``folders`` or lies under one (through links
    too): every file of such a folder is read as an input (a weights folder's files are its models, a
    data folder's its images), so an output is never written among them. ``None`` entries are skipped."""
    target = Path(out).resolve()
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        if target.is_relative_to(Path(folder).resolve()):
            raise OverwriteError(f"{option} {out} is inside the {what} {folder} of this run: its files are "
                                 "read as inputs; give a path outside it")
