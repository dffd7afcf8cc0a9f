"""Knowledge distillation: a small student learns a bigger teacher's soft targets inside the training engine.

`distill(teacher, student="efficientnet_lite0", out=RUN)` (the CLI's `skulens distill`) is a fine-tune with
`teacher` set: the engine runs the frozen teacher on each batch and blends its soft targets into the fine
loss (`skulens.train.teacher`). Checkpoints, resume, EMA, selection on val, calibration and the report are
the engine's; the bundle's card records the teacher under `lineage`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..config import ConfigError, resolve_config, warn_unused
from ..data.locate import recorded_dataset, resolve_data

if TYPE_CHECKING:
    from ..train.engine import TrainResult

__all__ = ["DEFAULT_STUDENT", "distill"]

# Lite0: the smallest bundled backbone, the one the deployment benchmark measures as the distilled model.
DEFAULT_STUDENT = "efficientnet_lite0"


def distill(teacher: str | os.PathLike[str], *, student: str | None = None,
            data: str | os.PathLike[str] | None = None, out: str | None = None, progress: bool = True,
            resume_advice: str | None = None, **overrides: Any) -> TrainResult:
    """Train `student` (default: `overrides["backbone"]`, else Lite0) on `teacher`'s soft targets + labels.

    `data`: the catalogue; default the one the teacher was trained on (if still there), else the default
    dataset. `overrides` are TrainConfig fields (distill_temperature, distill_alpha, epochs, ...); val_fraction
    and seed default to the teacher's, so a generated val split is the one the teacher never trained on.
    """
    from ..train.engine import fit

    values = dict(overrides)
    values["teacher"] = os.fspath(teacher)
    if student and values.get("backbone") not in (None, student):  # the backbone was trained without a word
        raise ConfigError(f"student {student} and backbone {values['backbone']}: both name the student's "
                          "backbone; give one")
    if student or "backbone" not in values:
        values["backbone"] = student or DEFAULT_STUDENT
    values["data"] = str(resolve_data(data, recorded=recorded_dataset(teacher)))
    from ..evaluate.heldout import split_settings
    from ..models.bundle import read_card

    # The teacher's split unless told otherwise: a val carved out of train then holds no photo the teacher
    # trained on (the student's selection, and `--preset fast`'s check on that val, stay honest).
    values = {**split_settings(read_card(teacher)), **values}
    if out is not None:
        values["out"] = out
    cfg = resolve_config(values)
    warn_unused(cfg)  # as train and retrain say it
    return fit(cfg, progress=progress, resume_advice=resume_advice)
