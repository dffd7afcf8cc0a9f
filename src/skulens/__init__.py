"""skulens: product image recognition with pretrained models.

Heavy modules (torch, timm) load lazily, on first use of `train`, `load` or the result types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["train", "load", "Model", "Prediction", "EvalReport", "TrainConfig", "load_catalogue", "__version__"]

_LAZY = {
    "train": "skulens.api",
    "load": "skulens.api",
    "Model": "skulens.api",
    "Prediction": "skulens.api",
    "EvalReport": "skulens.evaluate.metrics",
    "TrainConfig": "skulens.config",
    "load_catalogue": "skulens.data.catalogue",
}

if TYPE_CHECKING:
    from .api import Model, Prediction, load, train
    from .config import TrainConfig
    from .data.catalogue import load_catalogue
    from .evaluate.metrics import EvalReport


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'skulens' has no attribute {name!r}")
