"""Run logging: metrics.jsonl always; TensorBoard, MLflow and W&B when installed and asked for.

W&B follows the user's own settings ($WANDB_MODE, $WANDB_PROJECT); with no mode set it runs offline, so a
run never uploads anything the user did not ask to upload (`wandb sync` sends an offline run later).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["RunLogger"]

log = logging.getLogger(__name__)


class RunLogger:
    def __init__(self, run_dir: Path, loggers: tuple[str, ...], config: dict[str, Any]):
        self.path = run_dir / "metrics.jsonl"
        self._tb = self._mlflow = self._wandb = None
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed (pip install tensorboard); skipping it")
        if "mlflow" in loggers:
            try:
                import mlflow
            except ImportError as e:
                raise ImportError("logger 'mlflow' needs: pip install 'skulens[mlflow]'") from e
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
            mlflow.start_run()
            mlflow.log_params({k: str(v) for k, v in config.items()})
            self._mlflow = mlflow
        if "wandb" in loggers:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("logger 'wandb' needs: pip install 'skulens[wandb]'") from e
            self._wandb = wandb.init(mode=os.environ.get("WANDB_MODE", "offline"),
                                     project=os.environ.get("WANDB_PROJECT"), dir=str(run_dir), config=config)

    def log(self, step: int, values: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        scalars = {k: float(v) for k, v in values.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
        if self._wandb is not None:
            self._wandb.finish()
