"""Checkpoints: fixed keys (:data:`CHECKPOINT_KEYS`), written to a temporary file and renamed so that a
killed run never leaves half a file, read back with ``torch.load(weights_only=True)`` and checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from utils.core.files import atomic_path
from utils.core.log import first_line

# "model" holds the weights to use (the moving average when ema_decay is set); "ema" is None without
# one, else {"train_model": the trained weights, "updates": n} for an exact resume.
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "config", "metrics", "ema")
# Config keys that choose which folds a run trains, not how one fold trains: a fold's checkpoint resumes
# under another fold list, so folds trained in separate sessions (folds: [0], then [1], ...) join one
# run folder and its five-fold report through --resume (each finished fold is only predicted again).
RUN_LEVEL_KEYS = frozenset({"folds"})
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; names the file and the reason."""


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` (exactly :data:`CHECKPOINT_KEYS`) to a temporary file, then rename it over ``path``."""
    differing = set(CHECKPOINT_KEYS) ^ set(state)
    if differing:
        raise CheckpointError(f"{path}: checkpoint keys must be {CHECKPOINT_KEYS}; differs in {sorted(differing)}")
    # numpy scalars (a metric's value) pickle as numpy objects, which a weights_only load refuses.
    state = {**state, "config": plain_values(state["config"]), "metrics": plain_values(state["metrics"])}
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return Path(path)


def plain_values(value):
    """``value`` with numpy scalars and arrays inside dicts, lists and tuples turned into Python numbers."""
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_values(v) for v in value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def copy_atomic(source, destination) -> Path:
    """Copy a finished file (``last.pt`` to ``best.pt``) without writing the state a second time."""
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)
    return Path(destination)


def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint`; a missing or foreign file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # weights_only: tensors, numbers, strings and plain containers only, so reading can never run code.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first_line(err)})") from None
    if isinstance(state, dict) and set(state) == set(CHECKPOINT_KEYS) - {"ema"}:
        state["ema"] = None  # written before the moving average existed
    if not isinstance(state, dict) or set(state) != set(CHECKPOINT_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: expected keys {CHECKPOINT_KEYS}, found {keys}")
    return state
