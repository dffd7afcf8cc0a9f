"""Pruned models rebuilt from their cards: the standard architecture, narrowed as `card.pruning` says.

A structurally pruned bundle lists its narrower layers in the card (`pruning.widths`, plain JSON, see
`skulens.models.channels`); loading it and starting a run from it (`init_from`) both rebuild that
architecture before loading weights. Unstructured pruning keeps every shape (its zeros are in the
weights), so there is nothing to rebuild. The pruning itself is a deployment step: `skulens.deploy.prune`.
"""

from __future__ import annotations

from typing import Any

from .card import ModelCard
from .channels import apply_widths
from .classifier import SkuModel

__all__ = ["adopt_pruning", "apply_pruning"]


def apply_pruning(model: SkuModel, pruning: dict[str, Any]) -> SkuModel:
    """Narrow a freshly built standard `model` in place to a card's `pruning` entry; returns it."""
    if pruning.get("widths"):
        apply_widths(model, pruning["widths"])
    return model


def adopt_pruning(model: SkuModel, card: ModelCard, source: ModelCard) -> ModelCard:
    """A run starting from the bundle `source` describes: its narrower layers and its pruning record
    carry over into `model` (in place) and the returned card; an unpruned source changes nothing."""
    if not source.pruning:
        return card
    apply_pruning(model, source.pruning)
    return card.with_(pruning=source.pruning, lineage={**source.lineage, **card.lineage})
