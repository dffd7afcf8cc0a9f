"""Preprocessing built from a model card (or backbone spec), with torchvision transforms v2.

Images arrive as uint8 CHW tensors already resized so the short side is `resize_to` (the decode cache
does that once), so the per-epoch work is only cropping, augmentation and normalisation.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torchvision.transforms import v2

from .decode import DEFAULT_MAX_ASPECT

__all__ = ["PreprocessSpec", "RandomJpeg", "create_transform", "jpeg_roundtrip", "robust_transform", "to_uint8_tensor"]


class PreprocessSpec(Protocol):
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float


def create_transform(spec: PreprocessSpec, *, train: bool = False, augment: str = "light",
                     train_size: int | None = None) -> v2.Compose:
    """uint8 CHW tensor (any size) -> normalised float tensor of `input_size` (`train_size` when training)."""
    size = train_size if train and train_size else spec.input_size
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    if not train or augment == "none":
        # "none" trains on the eval view, at `size`: the same framing (crop_pct) as eval, not a crop of
        # train_size out of an image resized for input_size (a zoom, or black padding when larger).
        resize = round(size / spec.crop_pct)
        # max_size: a PIL image handed in directly skips decode_image's aspect-ratio guard.
        ops: list = [v2.Resize(resize, antialias=True, max_size=math.ceil(resize * DEFAULT_MAX_ASPECT)),
                     v2.CenterCrop(size)]
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
    if augment == "robust":
        return robust_transform(size, finish)
    raise ValueError(f"unknown augmentation preset {augment!r}: none, light, strong or robust")


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """A uint8 CHW image compressed to JPEG at `quality` and decoded again, through Pillow (training's
    `RandomJpeg` and the robustness benchmark's JPEG corruption both use it)."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(x.permute(1, 2, 0).cpu().numpy()).save(buf, format="JPEG", quality=int(quality))
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(back.copy()).permute(2, 0, 1)


class RandomJpeg(torch.nn.Module):
    """JPEG-compress a uint8 CHW image at a random quality, through Pillow (torchvision's own JPEG
    encoder is deprecated since 0.29 and warns on every call)."""

    def __init__(self, quality: tuple[int, int]):
        super().__init__()
        self.quality = quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_roundtrip(x, int(torch.randint(self.quality[0], self.quality[1] + 1, (1,))))


def robust_transform(size: int, finish: list) -> v2.Compose:
    """"light" plus the ways real phone photos degrade, each on a share of the batches: JPEG compression,
    Gaussian blur, sensor noise and stronger lighting changes (torchvision v2 ops, at the model's input
    size, where `evaluate.robustness` applies its corruptions too). The ranges stop short of the
    benchmark's worst severities: training on them cost clean accuracy elsewhere (ImageNet-C practice)."""
    # blur sigma in px, the robustness benchmark's scale (its levels are for 224 px); at least the 0.5 the range
    # starts at (under ~38 px the range was empty: a ValueError)
    sigma = max(3.0 * size / 224, 0.5)
    kernel = 2 * math.ceil(3 * sigma) + 1
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.4, 0.3, 0.3),
        v2.RandomApply([RandomJpeg((10, 60))], p=0.2),  # on uint8, before the float conversion
        finish[0],
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.5, sigma))], p=0.2),
        v2.RandomApply([v2.RandomChoice([v2.GaussianNoise(sigma=s) for s in (0.04, 0.08, 0.15)])], p=0.2),
        *finish[1:],
    ])


def to_uint8_tensor(image) -> torch.Tensor:
    """PIL RGB image -> uint8 CHW tensor."""
    return v2.functional.pil_to_tensor(image)
