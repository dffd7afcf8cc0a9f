"""Corruption in the training step (`--corrupt-fraction F`): a share of each batch degraded as phone photos
degrade, while a teacher (`--teacher`) gives its soft targets on the clean photo.

The `robust` augmentation preset degrades photos in the loader, so a teacher sees the same degraded photo
as the student. Here the loader's batch (any preset) stays clean for the teacher, and each photo of the
last `fraction` of the batch (the last rows: `--adversarial` replaces the first ones, so the two touch
different photos while their shares fit in one batch) gets one degradation for the student: JPEG at
quality 7-60, Gaussian blur (sigma 0.5 to 6 px at 224 px, scaled with the batch's size), sensor noise
(sigma 0.03-0.4), a lighting change (brightness and contrast each 0.5-1.5, then on half the photos a glare
that lifts every pixel towards white by up to half), a tilt (up to 60 degrees either way, the corners
filled with the photo's mean colour) or an occluder (a rectangle of 4-36 % of the photo, aspect 1:2 to 2:1,
of one random colour or of noise, as a hand or a price tag covers a product). Blur and noise strengths are
drawn log-uniformly, so mild degradations stay common while the range reaches what a dark or shaken phone
photo shows (the ImageNet-C levels the robustness benchmark uses at severity 5: blur 6 px, noise 0.38,
JPEG 7). The benchmark's own brightness, rotation and occlusion differ in form (an HSV value lift, a grey
fill, a grey square): its scores on them are not scores on the training distortion. The student so learns
to answer on a degraded photo what the teacher answers on the clean one (consistency with a clean
teacher, as in AugMix's and robust distillation's practice), instead of only the label.

The draws are seeded by the run's seed: under DDP every rank draws the same sequence of kinds and
strengths (over different photos), and a resumed run starts the sequence again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import functional as TF

from ..data.transforms import jpeg_roundtrip
from ..evaluate.attacks import normalisation

__all__ = ["KINDS", "CorruptBatch", "degraded_twins"]

KINDS = ("jpeg", "blur", "noise", "lighting", "rotation", "occlusion")


class CorruptBatch:
    """Engine hook: the batch with its last `fraction` of photos degraded (one kind each, seeded)."""

    def __init__(self, fraction: float, mean: Sequence[float], std: Sequence[float], seed: int = 0):
        if not 0 < fraction <= 1:
            raise ValueError(f"corrupt fraction must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.mean, self.std = tuple(mean), tuple(std)
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _log_uniform(self, low: float, high: float) -> float:
        return math.exp(self._uniform(math.log(low), math.log(high)))

    def degrade(self, pixels: torch.Tensor, kind: str) -> torch.Tensor:
        """One CHW photo in [0, 1], degraded by `kind` at a random strength."""
        if kind == "jpeg":
            q = int(torch.randint(7, 61, (), generator=self.generator))
            as_bytes = (pixels * 255).round().clamp(0, 255).to(torch.uint8).cpu()
            return (jpeg_roundtrip(as_bytes, q).float() / 255).to(pixels.device)
        if kind == "blur":
            scale = pixels.shape[-1] / 224  # the robustness benchmark's scale, at this photo's size
            sigma = self._log_uniform(0.5, 6.0) * scale
            kernel = 2 * math.ceil(3 * sigma) + 1
            return TF.gaussian_blur(pixels, [kernel, kernel], [sigma, sigma])
        if kind == "noise":
            sigma = self._log_uniform(0.03, 0.4)
            noise = torch.randn(pixels.shape, generator=self.generator).to(pixels.device)
            return (pixels + sigma * noise).clamp(0, 1)
        if kind == "lighting":
            out = TF.adjust_brightness(pixels, self._uniform(0.5, 1.5))
            out = TF.adjust_contrast(out, self._uniform(0.5, 1.5)).clamp(0, 1)
            if self._uniform(0, 1) < 0.5:  # glare: every pixel lifted towards white
                lift = self._uniform(0, 0.5)
                out = out * (1 - lift) + lift
            return out
        if kind == "rotation":
            angle = self._uniform(-60, 60)
            fill = [float(v) for v in pixels.mean((-2, -1))]
            return TF.rotate(pixels, angle, fill=fill)
        if kind == "occlusion":
            return self._occlude(pixels)
        raise ValueError(f"unknown corruption {kind!r}: {', '.join(KINDS)}")

    def _occlude(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[-2:]
        area, aspect = self._uniform(0.04, 0.36) * h * w, self._log_uniform(0.5, 2.0)
        oh = max(1, min(h, round(math.sqrt(area * aspect))))
        ow = max(1, min(w, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, h - oh + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - ow + 1, (), generator=self.generator))
        if self._uniform(0, 1) < 0.5:
            patch = torch.rand((3, 1, 1), generator=self.generator).expand(3, oh, ow)
        else:
            patch = torch.rand((3, oh, ow), generator=self.generator)
        out = pixels.clone()
        out[:, top:top + oh, left:left + ow] = patch.to(pixels.device, pixels.dtype)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (normalised, as the loader gives it; shuffled) with its last rows degraded; `x` is not changed."""
        n = min(len(x), math.ceil(self.fraction * len(x)))
        if n == 0:
            return x
        m, s = normalisation(self.mean, self.std, x.device)
        pixels = (x[-n:].detach().float() * s + m).clamp(0, 1)
        kinds = torch.randint(len(KINDS), (n,), generator=self.generator).tolist()
        degraded = torch.stack([self.degrade(p, KINDS[k]) for p, k in zip(pixels, kinds, strict=True)])
        out = x.detach().clone()
        out[-n:] = ((degraded - m) / s).to(x.dtype)
        return out


def degraded_twins(images: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Each uint8 CHW photo degraded once by the training corruptions, the kinds in turn (photo i gets
    KINDS[i % 6]) at seeded strengths: the same twins every epoch and every run of a seed, so the selection
    photos' robustness can be compared from epoch to epoch (`--monitor robust_top1`)."""
    corrupter = CorruptBatch(1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), seed=seed)
    out = []
    for i, im in enumerate(images):
        pixels = corrupter.degrade(im.float() / 255, KINDS[i % len(KINDS)])
        out.append((pixels * 255).round().clamp(0, 255).to(torch.uint8))
    return out
