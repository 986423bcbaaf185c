"""Atomic file writes: the one way every stage writes an output that a killed run must not leave half-written."""

from __future__ import annotations

import os
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
