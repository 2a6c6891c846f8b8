"""Controllers of the entropy weight ``λ`` and live external feedback through a control file."""

from hclm.control.controllers import (
    ConstantController,
    Controller,
    CosineSchedule,
    PIController,
    StepSchedule,
    check_band,
    check_floor,
    check_lam,
)
from hclm.control.feedback import (
    CONTROL_FILE,
    FeedbackEvent,
    FeedbackReader,
    apply_change,
    events_to_json,
    write_feedback,
)

__all__ = [
    "CONTROL_FILE",
    "ConstantController",
    "Controller",
    "CosineSchedule",
    "FeedbackEvent",
    "FeedbackReader",
    "PIController",
    "StepSchedule",
    "apply_change",
    "check_band",
    "check_floor",
    "check_lam",
    "events_to_json",
    "write_feedback",
]
