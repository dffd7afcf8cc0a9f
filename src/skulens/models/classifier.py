"""One model for classification and search: a backbone with fine, coarse and attribute heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone

__all__ = ["SkuModel"]


class SkuModel(nn.Module):
    """Backbone + heads. `forward` returns a dict of logits: fine, and coarse / attributes when present."""

    def __init__(self, backbone: Backbone, num_classes: int, num_coarse: int = 0, num_attributes: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        d = backbone.num_features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d, num_classes)
        self.coarse_head = nn.Linear(d, num_coarse) if num_coarse else None
        self.attribute_head = nn.Linear(d, num_attributes) if num_attributes else None
        # Temperatures of the fine and coarse softmax, fitted on val after training (1 while training).
        self.register_buffer("temperature", torch.ones(2))

    @property
    def embedding_dim(self) -> int:
        return self.backbone.num_features

    def heads(self) -> list[nn.Module]:
        return [m for m in (self.head, self.coarse_head, self.attribute_head) if m is not None]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.dropout(pooled)
        out = {"fine": self.head(z)}
        if self.coarse_head is not None:
            out["coarse"] = self.coarse_head(z)
        if self.attribute_head is not None:
            out["attributes"] = self.attribute_head(z)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised image embedding (the vector search indexes)."""
        return F.normalize(self.backbone(x).float(), dim=-1)
