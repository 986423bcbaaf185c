"""The registry of inference members: what the predictor loads for each manifest entry's ``kind``. The
built-in kinds' (each kind's ``MEMBER`` in ``utils/kinds/<name>/member.py``, for every name of
:data:`utils.core.kind_names.BUILT_IN`), then the members of the ``siim_covid.members`` entry points
(:mod:`utils.core.plugins`); the kind's training side (``utils/kinds/<name>/training.py``) names the same
class as its ``member_class``. Imports no training code: the predictor, the notebook and the web app load
members through it."""

from __future__ import annotations

from importlib import import_module

from utils.core.kind_names import BUILT_IN as BUILT_IN_NAMES
from utils.core.kind_names import built_in_module
from utils.core.plugins import MEMBER_GROUP, add_unique, clash, load_plugins
from utils.kinds.member import Detections, Member, model_input, with_flipped

BUILT_IN: tuple[type[Member], ...] = tuple(import_module(built_in_module(name, "member")).MEMBER
                                           for name in BUILT_IN_NAMES)


def _member_problem(name: str, value, kept: list) -> str | None:
    if not (isinstance(value, type) and issubclass(value, Member)):
        return f"names {value!r}, not a Member class"
    return clash(value, (*BUILT_IN, *kept), ("kind",))


MEMBER_TYPES: dict[str, type[Member]] = {}
for _member in (*BUILT_IN, *load_plugins(MEMBER_GROUP, _member_problem)):
    add_unique(MEMBER_TYPES, _member.kind, _member, "member kind")

__all__ = ["MEMBER_TYPES", "Detections", "Member", "model_input", "with_flipped"]
