"""Preprocessing built from a model card (or backbone spec), with torchvision transforms v2.

Images arrive as uint8 CHW tensors already resized so the short side is `resize_to` (the decode cache
does that once), so the per-epoch work is only cropping, augmentation and normalisation.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torchvision.transforms import v2

__all__ = ["PreprocessSpec", "create_transform", "to_uint8_tensor"]


class PreprocessSpec(Protocol):
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float


def _resize_to(spec: PreprocessSpec) -> int:
    return round(spec.input_size / spec.crop_pct)


def create_transform(spec: PreprocessSpec, *, train: bool = False, augment: str = "light",
                     train_size: int | None = None) -> v2.Compose:
    """uint8 CHW tensor (any size) -> normalised float tensor of `input_size` (`train_size` when training)."""
    size = train_size if train and train_size else spec.input_size
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    if not train or augment == "none":
        # "none" trains on the eval view.
        ops: list = [v2.Resize(_resize_to(spec), antialias=True), v2.CenterCrop(size)]
        return v2.Compose(ops + finish)
    if augment == "light":
        ops = [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.2, 0.2, 0.2),
        ]
        return v2.Compose(ops + finish)
    if augment == "strong":
        # Val/test photos come from other stores: lighting, framing and clutter shift, so augment hard
        # on exactly those (crop scale, colour, blur) and occlusion (erasing).
        ops = [
            v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.TrivialAugmentWide(),
        ]
        return v2.Compose(ops + finish + [v2.RandomErasing(p=0.25, value=0)])
    raise ValueError(f"unknown augmentation preset {augment!r}: none, light or strong")


def to_uint8_tensor(image) -> torch.Tensor:
    """PIL RGB image -> uint8 CHW tensor."""
    return v2.functional.pil_to_tensor(image)
