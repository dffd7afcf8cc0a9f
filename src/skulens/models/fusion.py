"""Image + text fusion head, for catalogues whose listings carry their own title or text.

Late fusion over the two frozen embeddings (the model's image embedding, the text embedding of the bundle's
fine-tuned encoder when `skulens text-tune` made one, else the bundled MiniLM's; the head records which):
each modality is projected, the projections are concatenated and classified. Trained with modality
dropout (whole modalities zeroed at random, with a flag saying so), so one head answers image-only,
text-only and both; the report compares the three on the same photos.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FUSION_FILE", "FusionConfig", "FusionHead", "LoadedFusion", "load_fusion", "save_fusion", "train_fusion"]

FUSION_FILE = "fusion.safetensors"


@dataclass(frozen=True)
class FusionConfig:
    hidden: int = 512
    dropout: float = 0.3
    modality_dropout: float = 0.3  # probability of dropping the image, and (separately) the text, per sample
    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0


class FusionHead(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.3):
        super().__init__()
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
        # +2: flags telling the classifier which modalities are present (a zero vector is not "absent").
        self.classifier = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * hidden + 2, num_classes))

    def forward(self, image: torch.Tensor, text: torch.Tensor, has_image: torch.Tensor, has_text: torch.Tensor
                ) -> torch.Tensor:
        zi = self.image_proj(image) * has_image[:, None]
        zt = self.text_proj(text) * has_text[:, None]
        return self.classifier(torch.cat([zi, zt, has_image[:, None], has_text[:, None]], 1))

    @torch.no_grad()
    def probabilities(self, image: np.ndarray | None, text: np.ndarray | None) -> np.ndarray:
        """Class probabilities from either or both modalities (N x C); a missing one is passed as None."""
        self.eval()
        n = len(image) if image is not None else len(text)  # type: ignore[arg-type]
        d_i = self.image_proj[1].in_features
        d_t = self.text_proj[1].in_features
        xi = torch.zeros(n, d_i) if image is None else torch.as_tensor(image, dtype=torch.float32)
        xt = torch.zeros(n, d_t) if text is None else torch.as_tensor(text, dtype=torch.float32)
        hi = torch.full((n,), 0.0 if image is None else 1.0)
        ht = torch.full((n,), 0.0 if text is None else 1.0)
        return self(xi, xt, hi, ht).softmax(-1).numpy()


def train_fusion(image: np.ndarray, text: np.ndarray, labels: np.ndarray, num_classes: int,
                 config: FusionConfig = FusionConfig(), *, text_present: np.ndarray | None = None) -> FusionHead:
    """Fit on paired embeddings (rows aligned); `text_present` marks listings that have text at all."""
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    head = FusionHead(image.shape[1], text.shape[1], num_classes, config.hidden, config.dropout)
    xi = torch.as_tensor(image, dtype=torch.float32)
    xt = torch.as_tensor(text, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    tp = torch.ones(len(y)) if text_present is None else torch.as_tensor(text_present, dtype=torch.float32)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * max(1, -(-len(y) // config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    head.train()
    for _ in range(config.epochs):
        for b in torch.randperm(len(y), generator=g).split(config.batch_size):
            drop_i = torch.rand(len(b), generator=g) < config.modality_dropout
            drop_t = (torch.rand(len(b), generator=g) < config.modality_dropout) & ~drop_i  # never both
            hi = (~drop_i).float()
            ht = (~drop_t).float() * tp[b]
            loss = F.cross_entropy(head(xi[b], xt[b], hi, ht), y[b], label_smoothing=config.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


class LoadedFusion(NamedTuple):
    head: FusionHead
    classes: tuple[str, ...]
    text_model: str  # the text encoder it was fitted on ("bundle": the bundle's fine-tuned one)
    text_fingerprint: str | None  # which fine-tuned weights, for "bundle"


def save_fusion(head: FusionHead, path: str | os.PathLike, classes: tuple[str, ...], *, text_model: str = "minilm",
                text_fingerprint: str | None = None) -> Path:
    """Write the head to `path`: a bundle folder (its fusion.safetensors) or a file ending in .safetensors."""
    from .bundle import atomic_save_tensors

    p = Path(path)
    if p.is_dir():
        p = p / FUSION_FILE
    elif p.suffix != ".safetensors":  # e.g. a bundle's card.json: the head would be written over it
        raise ValueError(f"{path}: a fusion head is saved into a bundle folder or a .safetensors file")
    meta = {"classes": "\n".join(classes), "hidden": str(head.image_proj[1].out_features), "text_model": text_model}
    if text_fingerprint:
        meta["text_fingerprint"] = text_fingerprint
    return atomic_save_tensors({k: v.contiguous() for k, v in head.state_dict().items()}, p, metadata=meta)


def load_fusion(path: str | os.PathLike) -> LoadedFusion | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / FUSION_FILE
    if not p.is_file():
        return None
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    state = load_file(str(p))
    classes = tuple(meta.get("classes", "").split("\n"))
    d_i = state["image_proj.1.weight"].shape[1]
    d_t = state["text_proj.1.weight"].shape[1]
    head = FusionHead(d_i, d_t, len(classes), int(meta.get("hidden", 512)))
    head.load_state_dict(state)
    return LoadedFusion(head.eval(), classes, meta.get("text_model", "minilm"), meta.get("text_fingerprint"))
