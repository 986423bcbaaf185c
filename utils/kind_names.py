"""The model kinds' names (each kind's config section, run folder and weights subfolder) without importing
a kind: what the scripts that only read a run's files need (the CV report, the calibration), so that they
start in a second instead of importing every network. A plugin kind's name is its entry point's name
(:mod:`utils.plugins` leaves out one whose section differs); ``tests/test_kind_plugin.py`` checks that
:data:`BUILT_IN` is the registry's built-in order."""

from __future__ import annotations

from importlib.metadata import entry_points

from utils.plugins import KIND_GROUP

BUILT_IN = ("frcnn", "yolo", "study")  # utils/kinds/__init__.py's order: train_all trains them so
# Names written before each kind had one name (2026-12-07): manifests' model entries and kinds, the
# ensemble's per-model settings and prediction files' "model" column read them as today's.
LEGACY_NAMES = {"faster_rcnn": "frcnn", "study_classifier": "study"}


def canonical_name(name: str) -> str:
    """A kind's or model's name as written today (an older name through :data:`LEGACY_NAMES`)."""
    return LEGACY_NAMES.get(name, name)


def kind_names() -> tuple[str, ...]:
    """Every kind's name in the registry's order: the built-in ones, then the entry points' by name."""
    return (*BUILT_IN, *sorted(point.name for point in entry_points(group=KIND_GROUP)))
