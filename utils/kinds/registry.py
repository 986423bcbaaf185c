"""The registry of model kinds, for training: one package per kind (``utils/kinds/<name>/``), each
built-in kind's ``KIND`` imported by its name in :data:`utils.core.kind_names.BUILT_IN`.

Training order (train/train_all.py runs them in turn): the pretraining kinds of :data:`PRETRAINING`
(the NIH backbone: no folds, no member; :class:`utils.kinds.base.PretrainingKind`), then :data:`KINDS`:
the built-in kinds, then those of the ``siim_covid.kinds`` entry points (:mod:`utils.core.plugins`).
Each kind of KINDS names its inference member (``member_class``, registered in
:mod:`utils.kinds.members` for the predictor, which imports nothing of training). What a kind provides:
:class:`utils.kinds.base.ModelKind` and docs/architecture.md.
"""

from __future__ import annotations

from importlib import import_module

from utils.core.kind_names import BUILT_IN as BUILT_IN_NAMES
from utils.core.kind_names import built_in_module, canonical_name
from utils.core.plugins import KIND_GROUP, add_unique, clash, load_plugins, plugin_problems
from utils.kinds.backbone import training as backbone
from utils.kinds.base import (
    FoldResult,
    ModelKind,
    PretrainingKind,
    RunOptions,
    StagePlan,
    TrainingError,
    train_folds,
)
from utils.kinds.members import Member

BUILT_IN: tuple[ModelKind, ...] = tuple(import_module(built_in_module(name, "training")).KIND
                                        for name in BUILT_IN_NAMES)
# Trained before every kind of KINDS, each from data of its own; its name is a config section and run folder.
PRETRAINING: dict[str, PretrainingKind] = {backbone.KIND.name: backbone.KIND}


def _kind_problem(name: str, value, kept: list) -> str | None:
    if not isinstance(value, ModelKind):
        return f"names {value!r}, not a ModelKind instance"
    if value.name != name:  # utils.core.kind_names.kind_names reads the kinds' names from the entry points alone
        return f"names a kind named {value.name!r}: the entry point must be named after it"
    if getattr(value.member_class, "kind", None) != value.name:
        return f"its member {value.member_class.__name__} loads kind {getattr(value.member_class, 'kind', None)!r}, " \
               f"not the kind's name {value.name!r}"
    return clash(value, (*BUILT_IN, *PRETRAINING.values(), *kept), ("name",))


KINDS: dict[str, ModelKind] = {}
for _kind in (*BUILT_IN, *load_plugins(KIND_GROUP, _kind_problem)):
    add_unique(KINDS, _kind.name, _kind, "model kind")


def kind_of_manifest(manifest_kind: str) -> ModelKind:
    """The kind whose manifest entries say ``"kind": manifest_kind`` (a name of :data:`LEGACY_NAMES` read
    as today's); unknown names raise ``KeyError``."""
    kind = KINDS.get(canonical_name(manifest_kind))
    if kind is None:
        raise KeyError(f"unknown model kind {manifest_kind!r}; known: {sorted(KINDS)}"
                       + "".join(f"; {problem}" for problem in plugin_problems(KIND_GROUP)))
    return kind


__all__ = ["KINDS", "PRETRAINING", "FoldResult", "Member", "ModelKind", "PretrainingKind", "RunOptions", "StagePlan",
           "TrainingError", "kind_of_manifest", "train_folds"]
