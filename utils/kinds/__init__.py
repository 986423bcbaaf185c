"""The registry of model kinds: one module per kind, one line each here.

Training order is the order of :data:`KINDS` (train/train_all.py runs them in turn); the predictor
loads a manifest entry with the member of :func:`kind_of_manifest`. What a new kind provides is
listed in the README's architecture notes (and :class:`utils.kinds.base.ModelKind`).
"""

from __future__ import annotations

from utils.kinds import frcnn, study, yolo
from utils.kinds.base import FoldResult, Member, ModelKind, RunOptions, TrainingError, train_folds

KINDS: dict[str, ModelKind] = {kind.section: kind for kind in (frcnn.KIND, yolo.KIND, study.KIND)}


def kind_of_manifest(manifest_kind: str) -> ModelKind:
    """The kind whose manifest entries say ``"kind": manifest_kind``; unknown names raise ``KeyError``."""
    for kind in KINDS.values():
        if kind.manifest_kind == manifest_kind:
            return kind
    raise KeyError(f"unknown model kind {manifest_kind!r}; known: {sorted(k.manifest_kind for k in KINDS.values())}")


__all__ = ["KINDS", "FoldResult", "Member", "ModelKind", "RunOptions", "TrainingError", "kind_of_manifest",
           "train_folds"]
