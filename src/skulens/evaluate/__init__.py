"""Evaluation stage: metrics on predictions (`metrics`) and human-readable reports (`report`)."""

from skulens.evaluate.metrics import (
    AttributeMetrics,
    ClassMetrics,
    ConfusedPair,
    EvalReport,
    TopLoss,
    choose_thresholds,
    derive_coarse,
    evaluate_predictions,
    expected_calibration_error,
    report_from_dict,
)
from skulens.evaluate.report import format_summary, write_report

__all__ = [
    "AttributeMetrics",
    "ClassMetrics",
    "ConfusedPair",
    "EvalReport",
    "TopLoss",
    "choose_thresholds",
    "derive_coarse",
    "evaluate_predictions",
    "expected_calibration_error",
    "format_summary",
    "report_from_dict",
    "write_report",
]
