"""skulens: product image recognition with pretrained models.

Heavy modules (torch, timm) load lazily, on first use of `train`, `load` or the result types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["EvalReport", "Model", "Prediction", "TrainConfig", "__version__", "load", "load_catalogue", "pretrained",
           "train"]

_LAZY = {
    "load": "skulens.api",
    "pretrained": "skulens.api",
    "Model": "skulens.api",
    "Prediction": "skulens.api",
    "EvalReport": "skulens.evaluate.metrics",
    "TrainConfig": "skulens.config",
    "load_catalogue": "skulens.data.catalogue",
}

if TYPE_CHECKING:
    from .api import Model, Prediction, load, pretrained
    from .config import TrainConfig
    from .data.catalogue import load_catalogue
    from .evaluate.metrics import EvalReport


# The subpackage skulens.train would replace the `train` function below on its first import (the import
# system sets it as an attribute of this package), so import it first (it is empty, no torch) and then
# bind the function over it. `import skulens.train.engine` keeps working through sys.modules.
from . import train as _train_subpackage  # noqa: F401


def train(data: Any = None, **kwargs: Any) -> Any:
    """Fine-tune a backbone on a catalogue; see `skulens.api.train`."""
    from .api import train as _train

    return _train(data, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'skulens' has no attribute {name!r}")
