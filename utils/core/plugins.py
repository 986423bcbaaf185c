"""Model kinds from outside the project, found through Python entry points (the standard plugin
mechanism: an installed distribution, or a ``*.dist-info`` folder on ``sys.path``, declares them).

    [siim_covid.kinds]      name = package.module:KIND       a ModelKind instance (training side)
    [siim_covid.members]    name = package.module:Member     a Member class (prediction side)

The two registries (:mod:`utils.kinds.registry`, :mod:`utils.kinds.members`) add them to the built-in
kinds, so a new kind is one module (or two, to keep its training out of prediction) and one entry point:
train_all, the CV report, the calibration, the manifest, make_submission and the notebook then use it
like any other.

A plugin that cannot be used (its import fails or exits, it names the wrong kind of object, or it takes
a name a registered kind has) is left out with a warning naming its entry point and why; every command
still runs, and asking for its kind repeats why it is missing (:func:`plugin_problems`). Someone else's
installed package never decides whether, or how, this project's commands exit.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Callable

KIND_GROUP = "siim_covid.kinds"
MEMBER_GROUP = "siim_covid.members"

log = logging.getLogger(__name__)
_PROBLEMS: dict[str, list[str]] = {}


class PluginError(RuntimeError):
    """Two built-in kinds of the same name (a mistake in this project, not in a plugin)."""


def load_plugins(group: str, problem_with: Callable[[str, object, list], str | None]) -> list:
    """The objects the entry points of ``group`` name, in name order, each kept only when it loads and
    ``problem_with(entry point name, value, kept so far)`` finds nothing wrong (else ``None`` or the
    reason); every entry point left out is logged and recorded for :func:`plugin_problems`."""
    kept = []
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        try:
            value = point.load()
        except (Exception, SystemExit) as err:  # noqa: BLE001 - any import-time failure (or exit) of someone else's module
            problem = f"does not load ({type(err).__name__}: {err})"
        else:
            problem = problem_with(point.name, value, kept)
        if problem is None:
            kept.append(value)
            continue
        message = f"entry point {point.name!r} = {point.value!r} in group {group!r} {problem}: left out"
        _PROBLEMS.setdefault(group, []).append(message)
        log.warning("%s", message)
    return kept


def plugin_problems(group: str) -> list[str]:
    """Why each entry point of ``group`` that was left out was (empty when none was)."""
    return list(_PROBLEMS.get(group, []))


def clash(value, registered, attributes: tuple[str, ...]) -> str | None:
    """Which of ``attributes`` (names the manifest, the config or the weights folder use) ``value``
    shares with an object in ``registered``, as a reason for :func:`load_plugins`; ``None`` if none."""
    for other in registered:
        for attribute in attributes:
            if getattr(value, attribute, None) == getattr(other, attribute, None):
                owner = getattr(other, "title", None) or getattr(other, "__name__", None) or repr(other)
                return f"takes the {attribute} {getattr(value, attribute)!r} of {owner}"
    return None


def add_unique(registry: dict, key: str, value, what: str) -> None:
    """``registry[key] = value``, refusing a second ``what`` of the same name."""
    if key in registry:
        raise PluginError(f"two {what}s named {key!r}: {registry[key]!r} and {value!r}")
    registry[key] = value
