"""A catalogue split decoded and encoded with a model card's label maps, ready for training or evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .catalogue import CatalogueError, Sample
from .dataset import decode_all

__all__ = ["LabelSpec", "Split", "prepare_split"]


class LabelSpec(Protocol):
    """What prepare_split reads from a model card: its label maps and the short side to decode at."""

    @property
    def classes(self) -> Sequence[str]: ...

    @property
    def coarse_classes(self) -> Sequence[str]: ...

    @property
    def attributes(self) -> Sequence[str]: ...

    @property
    def resize_to(self) -> int: ...


@dataclass
class Split:
    """A split's decoded images and targets, aligned."""

    images: list[torch.Tensor]
    fine: torch.Tensor
    coarse: torch.Tensor  # -100 where unknown
    attributes: torch.Tensor  # N x A multi-hot
    paths: list[str]
    skipped: list[tuple[str, str]]


def prepare_split(samples: list[Sample], card: LabelSpec, *, desc: str, progress: bool = True) -> Split:
    """Decode a split at the card's eval size and encode its labels with the card's label maps."""
    cls = {c: i for i, c in enumerate(card.classes)}
    coarse = {c: i for i, c in enumerate(card.coarse_classes)}
    attrs = {a: i for i, a in enumerate(card.attributes)}
    unknown = sorted({s.label for s in samples} - set(cls))
    if unknown:
        raise CatalogueError(f"{desc}: label(s) the model does not know: {', '.join(unknown[:5])}"
                         + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
    decoded = decode_all([s.path for s in samples], card.resize_to, desc=f"decode {desc}", progress=progress)
    kept = [samples[i] for i in decoded.kept]
    a = torch.zeros(len(kept), len(attrs))
    for r, s in enumerate(kept):
        for name in s.attributes:
            if name in attrs:
                a[r, attrs[name]] = 1.0
    return Split(
        images=decoded.images,
        fine=torch.tensor([cls[s.label] for s in kept], dtype=torch.long),
        coarse=torch.tensor([coarse.get(s.coarse_label or "", -100) for s in kept], dtype=torch.long),
        attributes=a,
        paths=[str(s.path) for s in kept],
        skipped=decoded.failed,
    )
