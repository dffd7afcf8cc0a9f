"""Freeze strategies: which backbone stages train, and keeping frozen BatchNorm statistics fixed."""

from __future__ import annotations

from torch import nn

from ..models.classifier import SkuModel

__all__ = ["apply_freeze", "train_mode"]


def apply_freeze(model: SkuModel, strategy: str, trainable_stages: int = 0, *, head_only: bool = False) -> list[nn.Module]:
    """Set requires_grad for a strategy; returns the frozen modules (kept in eval mode while training).

    head: only the heads train (linear probe). partial: the last `trainable_stages` stages train.
    full: everything trains. gradual: like head while `head_only`, then like full.
    """
    stages = model.backbone.stages()
    if strategy == "head" or (strategy == "gradual" and head_only):
        frozen = stages
    elif strategy in ("full", "gradual"):
        frozen = []
    elif strategy == "partial":
        n = max(0, min(trainable_stages, len(stages)))
        frozen = stages[: len(stages) - n]
    else:
        raise ValueError(f"unknown freeze strategy {strategy!r}: head, partial, full or gradual")
    for p in model.parameters():
        p.requires_grad_(True)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def train_mode(model: SkuModel, frozen: list[nn.Module], *, batch_norm: str = "train") -> None:
    """model.train(), but frozen stages keep their pretrained BatchNorm statistics; with `batch_norm="frozen"`
    every BatchNorm layer does (it normalises with its running statistics and does not update them, while its
    scale and shift still train)."""
    model.train()
    for m in frozen:
        m.eval()
    if batch_norm == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
