"""The registry of inference members: what the predictor loads for each manifest entry's ``kind``. One
line per built-in kind, plus the members of the ``siim_covid.members`` entry points (:mod:`utils.core.plugins`);
the kind's training side (``utils/kinds/<name>/training.py``) names the same class as its ``member_class``.
Imports no training code: the predictor, the notebook and the web app load members through it."""

from __future__ import annotations

from utils.core.plugins import MEMBER_GROUP, add_unique, clash, load_plugins
from utils.kinds.frcnn.member import FasterRCNNMember
from utils.kinds.member import Detections, Member, model_input, with_flipped
from utils.kinds.study.member import StudyMember
from utils.kinds.yolo.member import YoloMember

BUILT_IN = (StudyMember, FasterRCNNMember, YoloMember)


def _member_problem(name: str, value, kept: list) -> str | None:
    if not (isinstance(value, type) and issubclass(value, Member)):
        return f"names {value!r}, not a Member class"
    return clash(value, (*BUILT_IN, *kept), ("kind",))


MEMBER_TYPES: dict[str, type[Member]] = {}
for _member in (*BUILT_IN, *load_plugins(MEMBER_GROUP, _member_problem)):
    add_unique(MEMBER_TYPES, _member.kind, _member, "member kind")

__all__ = ["MEMBER_TYPES", "Detections", "Member", "model_input", "with_flipped"]
