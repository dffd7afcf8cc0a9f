"""Warm start: a new run begins from an earlier bundle's weights, head rows matched by class name."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..config import ConfigError
from ..models.bundle import load_bundle
from ..models.card import ModelCard
from ..models.classifier import SkuModel

__all__ = ["probe_start", "warm_start"]

log = logging.getLogger(__name__)


def _copy_rows(dst: torch.nn.Linear, dst_names: tuple[str, ...], src: torch.nn.Linear,
               src_names: tuple[str, ...]) -> int:
    """Rows of classes both heads know are copied; new classes keep their fresh initialisation."""
    where = {n: i for i, n in enumerate(src_names)}
    n = 0
    with torch.no_grad():
        for i, name in enumerate(dst_names):
            j = where.get(name)
            if j is not None:
                dst.weight[i].copy_(src.weight[j])
                dst.bias[i].copy_(src.bias[j])
                n += 1
    return n


def warm_start(model: SkuModel, card: ModelCard, bundle: str) -> dict[str, int]:
    """Load `bundle` into `model` in place: the whole backbone, and every head row whose class it knows."""
    old, old_card = load_bundle(bundle)
    if old_card.backbone != card.backbone:
        raise ConfigError(f"--init-from {bundle}: that bundle is a {old_card.backbone}, this run trains "
                          f"{card.backbone} (pass --backbone {old_card.backbone})")
    model.backbone.load_state_dict(old.backbone.state_dict())
    copied = {"fine": _copy_rows(model.head, card.classes, old.head, old_card.classes)}
    if model.coarse_head is not None and old.coarse_head is not None:
        copied["coarse"] = _copy_rows(model.coarse_head, card.coarse_classes, old.coarse_head, old_card.coarse_classes)
    if model.attribute_head is not None and old.attribute_head is not None:
        copied["attributes"] = _copy_rows(model.attribute_head, card.attributes, old.attribute_head,
                                          old_card.attributes)
    log.info("warm start from %s: backbone and %s head rows", bundle, copied)
    kept = set(card.classes)
    dropped = [c for c in old_card.classes if c not in kept]
    if dropped:  # a product the bundle knew leaves the model: said, since a retrain's data may simply lack it
        log.warning("warm start: %d product(s) of %s are not in this run's catalogue and leave the model: %s%s "
                    "(give their photos in --data, or to `skulens retrain` with --extra, to keep them)", len(dropped), bundle,
                    ", ".join(dropped[:5]), " ..." if len(dropped) > 5 else "")
    return copied


ProbeRows = tuple[np.ndarray, np.ndarray, np.ndarray]  # weight C x D, bias C, fitted C (evaluate.baseline.probe_head)


def probe_start(model: SkuModel, heads: dict[str, ProbeRows]) -> dict[str, int]:
    """LP-FT: the named heads ("fine", "coarse") take the linear probe's rows, where the probe fitted a class."""
    layers = {"fine": model.head, "coarse": model.coarse_head}
    copied = {}
    with torch.no_grad():
        for name, (weight, bias, fitted) in heads.items():
            layer = layers[name]
            if layer is None:
                continue
            rows = torch.from_numpy(np.flatnonzero(fitted))
            layer.weight[rows] = torch.from_numpy(weight[fitted]).to(layer.weight)
            layer.bias[rows] = torch.from_numpy(bias[fitted]).to(layer.bias)
            copied[name] = len(rows)
    log.info("heads start as the linear probe: %s rows", copied)
    return copied
