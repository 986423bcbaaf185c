"""The model kinds: one package per kind, under its one name (config section, run folder, manifest entry
and kind, weights subfolder, prediction rows' model):

    utils/kinds/<name>/config.py    its config section's schema            (no training, no torch model)
    utils/kinds/<name>/network.py   its network and how its weights load    (no training)
    utils/kinds/<name>/member.py    what the predictor loads (config + network)
    utils/kinds/<name>/training.py  the kind itself (``KIND``): datasets, fold training, report, manifest

The NIH backbone (``utils/kinds/backbone/``) has the same shape without a member: a pretraining kind,
trained before the others and predicted nowhere (:class:`utils.kinds.base.PretrainingKind`). What they
share: :mod:`utils.kinds.base` (the training protocol and the one fold loop),
:mod:`utils.kinds.member` (the prediction protocol), the registries :mod:`utils.kinds.registry` (the
kinds, for training; imports every kind's training) and :mod:`utils.kinds.members` (the members, for
prediction; imports no training). This module names the kinds without importing one: what the scripts
that only read a run's files need (the CV report, the calibration start in a second). A plugin kind's
name is its entry point's name (:mod:`utils.core.plugins` leaves out one named otherwise);
``tests/test_kind_plugin.py`` checks that :data:`BUILT_IN` is the registry's built-in order."""

from __future__ import annotations

from importlib.metadata import entry_points

from utils.core.plugins import KIND_GROUP

BUILT_IN = ("frcnn", "yolo", "study")  # utils/kinds/registry.py's order: train_all trains them so
# Names written before each kind had one name (2026-12-07): manifests' model entries and kinds, the
# ensemble's per-model settings and prediction files' "model" column read them as today's.
LEGACY_NAMES = {"faster_rcnn": "frcnn", "study_classifier": "study"}


def canonical_name(name: str) -> str:
    """A kind's or model's name as written today (an older name through :data:`LEGACY_NAMES`)."""
    return LEGACY_NAMES.get(name, name)


def kind_names() -> tuple[str, ...]:
    """Every kind's name in the registry's order: the built-in ones, then the entry points' by name."""
    return (*BUILT_IN, *sorted(point.name for point in entry_points(group=KIND_GROUP)))
