"""skulens: product image recognition with pretrained models.

Heavy modules (torch, timm) load lazily, on first use of `train`, `load` or the result types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["EvalReport", "Model", "Prediction", "TrainConfig", "__version__", "count", "evaluate", "load",
           "load_catalogue", "load_detector", "pretrained", "tag", "train"]

_LAZY = {
    "load": "skulens.api",
    "pretrained": "skulens.api",
    "load_detector": "skulens.api",
    "count": "skulens.api",
    "tag": "skulens.api",
    "Model": "skulens.api",
    "Prediction": "skulens.api",
    "EvalReport": "skulens.evaluate.metrics",
    "TrainConfig": "skulens.config",
    "load_catalogue": "skulens.data.catalogue",
}

if TYPE_CHECKING:
    from .api import Model, Prediction, count, load, load_detector, pretrained, tag
    from .config import TrainConfig
    from .data.catalogue import load_catalogue
    from .evaluate.metrics import EvalReport


# The subpackages skulens.train and skulens.evaluate would replace the functions below on their first import
# (the import system sets a subpackage as an attribute of its parent), so import them first (both package
# files are empty, no torch) and then bind the functions over them. `import skulens.train.engine` and
# `from skulens.evaluate.metrics import ...` keep working through sys.modules.
from . import evaluate as _evaluate_subpackage  # noqa: F401
from . import train as _train_subpackage  # noqa: F401


def train(data: Any = None, **kwargs: Any) -> Any:
    """Fine-tune a backbone on a catalogue; see `skulens.api.train`."""
    from .api import train as _train

    return _train(data, **kwargs)


def evaluate(model: Any, data: Any = None, **kwargs: Any) -> Any:
    """Evaluate a model or bundle on a catalogue split; see `skulens.api.evaluate`."""
    from .api import evaluate as _evaluate

    return _evaluate(model, data, **kwargs)


# `import skulens.train.engine as e` looks the submodule up as getattr(skulens.train, "engine") and, failing
# that, as sys.modules[skulens.train.__name__ + ".engine"]: the functions carry their subpackage's dotted
# name for that lookup (their repr and __qualname__ stay "train" / "evaluate").
train.__name__ = "skulens.train"
evaluate.__name__ = "skulens.evaluate"


# Modules reached as attributes after a plain `import skulens` (`skulens.api.train`, `skulens.deploy`), imported
# on first use; `skulens.train` and `skulens.evaluate` are the functions above.
_MODULES = frozenset({"api", "cli", "config", "data", "deploy", "detect", "models", "recommend", "search", "serve"})


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'skulens' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too (help(), tab completion listed train and evaluate only)."""
    return sorted(set(globals()) | set(__all__))
