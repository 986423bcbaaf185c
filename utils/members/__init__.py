"""The registry of inference members: what the predictor loads for each manifest entry's ``kind``. One
line per kind; the kind's training side (``utils/kinds/``) names the same class as its ``member_class``."""

from __future__ import annotations

from utils.members.base import Detections, Member, model_input, with_flipped
from utils.members.frcnn import FasterRCNNMember
from utils.members.study import StudyMember
from utils.members.yolo import YoloMember

MEMBER_TYPES: dict[str, type[Member]] = {member.manifest_kind: member
                                         for member in (StudyMember, FasterRCNNMember, YoloMember)}

__all__ = ["MEMBER_TYPES", "Detections", "Member", "model_input", "with_flipped"]
