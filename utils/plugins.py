"""Model kinds from outside the project, found through Python entry points (the standard plugin
mechanism: an installed distribution, or a ``*.dist-info`` folder on ``sys.path``, declares them).

    [siim_covid.kinds]      name = package.module:KIND       a ModelKind instance (training side)
    [siim_covid.members]    name = package.module:Member     a Member class (prediction side)

The two registries (:mod:`utils.kinds`, :mod:`utils.members`) add them to the built-in kinds, so a new kind
is one module (or two, to keep its training out of prediction) and one entry point: train_all, the CV
report, the calibration, the manifest, make_submission and the notebook then use it like any other.
"""

from __future__ import annotations

from importlib.metadata import entry_points

KIND_GROUP = "siim_covid.kinds"
MEMBER_GROUP = "siim_covid.members"


class PluginError(RuntimeError):
    """An entry point that cannot be loaded, or one that clashes with a kind already registered."""


def load_plugins(group: str) -> list:
    """The objects the entry points of ``group`` name, in name order; a broken one is a
    :class:`PluginError` naming the entry point and why."""
    found = []
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        try:
            found.append(point.load())
        except Exception as err:  # any import-time failure of someone else's module: name it
            raise PluginError(f"entry point {point.name!r} = {point.value!r} in group {group!r} does not load: "
                              f"{type(err).__name__}: {err}") from err
    return found


def add_unique(registry: dict, key: str, value, what: str) -> None:
    """``registry[key] = value``, refusing a second ``what`` of the same name."""
    if key in registry:
        raise PluginError(f"two {what}s named {key!r}: {registry[key]!r} and {value!r}")
    registry[key] = value
