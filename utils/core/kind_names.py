"""The built-in kinds, registered once (:data:`BUILT_IN`), and the kinds' names without importing a kind:
what the packages below :mod:`utils.kinds` need (the prediction schema, the manifest, the fusion's
per-model settings, the CV report) and the scripts that only read a run's files (the CV report, the
calibration start in a second).

A built-in kind is the package ``utils/kinds/<name>/`` and its name in :data:`BUILT_IN`: the training
registry (:mod:`utils.kinds.registry`) imports its ``training`` module's ``KIND`` and the member registry
(:mod:`utils.kinds.members`) its ``member`` module's ``MEMBER``, each by that name
(:func:`built_in_module`).

A kind's one name is its config section, run folder, manifest entry and kind, weights subfolder and the
"model" column of its prediction rows. A plugin kind's name is its entry point's name
(:mod:`utils.core.plugins` leaves out one named otherwise); ``tests/test_kind_plugin.py`` checks that
:data:`BUILT_IN` is the registry's built-in order."""

from __future__ import annotations

from importlib.metadata import entry_points

from utils.core.plugins import KIND_GROUP

BUILT_IN = ("frcnn", "yolo", "study")  # the registry's order: train_all trains them so
# Names written before each kind had one name (2026-12-07): manifests' model entries and kinds, the
# ensemble's per-model settings and prediction files' "model" column read them as today's.
LEGACY_NAMES = {"faster_rcnn": "frcnn", "study_classifier": "study"}


def built_in_module(name: str, side: str) -> str:
    """The module of built-in kind ``name``'s ``side`` (``"training"``, ``"member"``, ``"config"``...)."""
    return f"utils.kinds.{name}.{side}"


def canonical_name(name: str) -> str:
    """A kind's or model's name as written today (an older name through :data:`LEGACY_NAMES`)."""
    return LEGACY_NAMES.get(name, name)


def kind_names() -> tuple[str, ...]:
    """Every kind's name in the registry's order: the built-in ones, then the entry points' by name."""
    return (*BUILT_IN, *sorted(point.name for point in entry_points(group=KIND_GROUP)))
