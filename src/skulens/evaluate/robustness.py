"""Robustness: accuracy under adversarial attacks (FGSM, PGD) and common corruptions.

Everything happens in pixel space, on the model's view of the photo (the card's resize + centre crop,
values in [0, 1]); the card's mean/std normalisation is part of the attacked function, so `eps` is a
budget on real pixel values (eps 8 = 8/255) and attacked images stay valid images in [0, 1].

- `fgsm`, `pgd` (in `skulens.evaluate.attacks`): L-inf attacks on the fine head's cross-entropy.
- `corrupt`: Gaussian noise, Gaussian blur, JPEG, brightness, rotation and occlusion at severities 1-5
  (noise, blur, JPEG and brightness use the ImageNet-C levels; blur and occlusion scale with image size).
- `evaluate_robustness` -> `RobustnessReport` (typed; JSON, markdown and a plot via `write_robustness`).

Adversarial fine-tuning (`--adversarial fgsm|pgd`) is the training engine's (train/adversarial.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .attacks import fgsm, fine_logits_fn, pgd

__all__ = [
    "CORRUPTIONS",
    "AttackResult",
    "CorruptionResult",
    "RobustnessReport",
    "corrupt",
    "evaluate_robustness",
    "pixel_view",
    "robustness_bundle",
    "to_markdown",
    "write_robustness",
]


# ------------------------------------------------------------------------------------------ corruptions


def _noise(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    return (x + level * torch.randn(x.shape, generator=g).to(x.device)).clamp(0, 1)


def _blur(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    sigma = level * x.shape[-1] / 224  # the ImageNet-C sigmas are for 224 px images
    k = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def _jpeg(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    from ..data.transforms import jpeg_roundtrip

    pixels = (x * 255).round().to(torch.uint8)
    return torch.stack([jpeg_roundtrip(im, int(level)) for im in pixels]).float().div(255).to(x.device)


def _brightness(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    # + level on HSV value (ImageNet-C), done in RGB: at fixed hue and saturation RGB scales with V.
    v = x.amax(1, keepdim=True)
    lit = (x * ((v + level).clamp(max=1) / v.clamp(min=1e-6))).clamp(0, 1)
    # black has no hue or saturation to keep: HSV gives the grey of the new value (scaling left it black)
    return torch.where(v > 1e-6, lit, torch.full_like(x, min(level, 1.0)))


def _rotate(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    sign = torch.where(torch.rand(len(x), generator=g) < 0.5, -1.0, 1.0)
    return torch.stack([TF.rotate(im, float(s) * level, fill=[0.5, 0.5, 0.5])
                        for im, s in zip(x, sign, strict=True)])


def _occlude(x: torch.Tensor, level: float, g: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    side_h, side_w = max(1, round(level * h)), max(1, round(level * w))
    out = x.clone()
    for i in range(len(x)):
        top = int(torch.randint(0, h - side_h + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side_w + 1, (1,), generator=g))
        out[i, :, top:top + side_h, left:left + side_w] = 0.5
    return out


Corruption = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
# name -> (function, levels for severities 1..5, what a level means)
CORRUPTIONS: dict[str, tuple[Corruption, tuple[float, ...], str]] = {
    "gaussian_noise": (_noise, (0.08, 0.12, 0.18, 0.26, 0.38), "noise std (pixel units)"),
    "gaussian_blur": (_blur, (1, 2, 3, 4, 6), "blur sigma in px at 224 px"),
    "jpeg": (_jpeg, (25, 18, 15, 10, 7), "JPEG quality"),
    "brightness": (_brightness, (0.1, 0.2, 0.3, 0.4, 0.5), "+HSV value"),
    "rotation": (_rotate, (10, 20, 30, 45, 60), "degrees, random sign, grey fill"),
    "occlusion": (_occlude, (0.2, 0.3, 0.4, 0.5, 0.6), "grey square, side as a share of the image side"),
}


def corrupt(x: torch.Tensor, name: str, severity: int, *, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """A corrupted copy of a pixel-space batch (N x 3 x H x W in [0, 1]); severity 1 (mild) to 5."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}: {', '.join(CORRUPTIONS)}")
    fn, levels, _ = CORRUPTIONS[name]
    if not 1 <= severity <= len(levels):
        raise ValueError(f"severity {severity} is outside 1..{len(levels)}")
    return fn(x, levels[severity - 1], generator or torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class AttackResult:
    attack: str  # fgsm | pgd
    eps: float  # pixel levels: eps / 255 in [0, 1] pixel units
    steps: int
    top1: float
    max_linf: float  # largest measured |x_adv - x| in pixel levels (<= eps)


@dataclass(frozen=True)
class CorruptionResult:
    corruption: str
    severity: int
    level: float
    top1: float


@dataclass(frozen=True)
class RobustnessReport:
    clean_top1: float
    n_images: int
    attacks: tuple[AttackResult, ...]
    corruptions: tuple[CorruptionResult, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def attack_top1(self, attack: str, eps: float) -> float:
        return next(a.top1 for a in self.attacks if a.attack == attack and math.isclose(a.eps, eps))

    def corruption_mean(self) -> dict[str, float]:
        """Mean top-1 over severities, per corruption."""
        names = dict.fromkeys(c.corruption for c in self.corruptions)
        return {n: float(np.mean([c.top1 for c in self.corruptions if c.corruption == n])) for n in names}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, "clean_top1": self.clean_top1, "n_images": self.n_images,
                "attacks": [asdict(a) for a in self.attacks],
                "corruptions": [asdict(c) for c in self.corruptions],
                "corruption_mean": self.corruption_mean(), "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustnessReport:
        return cls(d["clean_top1"], d["n_images"], tuple(AttackResult(**a) for a in d["attacks"]),
                   tuple(CorruptionResult(**c) for c in d["corruptions"]), d.get("settings", {}))


def pixel_view(card: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW image -> the model's view in [0, 1]: the card's eval transform without its Normalize."""
    from torchvision.transforms import v2

    from ..data.transforms import create_transform

    ops = create_transform(card).transforms
    if not isinstance(ops[-1], v2.Normalize):
        raise TypeError("the eval transform no longer ends with Normalize; pixel_view needs updating")
    return v2.Compose(ops[:-1])


def photo_generator(seed: int, kind: str, arg: object, index: int) -> torch.Generator:
    """The random draws of photo `index` under one condition (an attack's eps, a corruption and severity)."""
    key = hashlib.sha256(f"{seed}|{kind}|{arg}|{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


def _batches(images: Sequence[torch.Tensor], targets: np.ndarray, view: Callable, batch_size: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(images), batch_size):
        yield (torch.stack([view(im) for im in images[i:i + batch_size]]),
               torch.as_tensor(targets[i:i + batch_size], dtype=torch.long))


def evaluate_robustness(net: nn.Module, card: Any, images: Sequence[torch.Tensor], targets: np.ndarray, *,
                        eps: Sequence[float] = (0.5, 1, 2, 4, 8), attacks: Sequence[str] = ("fgsm", "pgd"),
                        pgd_steps: int = 10, corruptions: Sequence[str] | None = None,
                        severities: Sequence[int] = (1, 2, 3, 4, 5), batch_size: int = 32, seed: int = 0,
                        device: torch.device | None = None, progress: bool = False) -> RobustnessReport:
    """Top-1 of the fine head under each attack x eps (pixel levels) and corruption x severity.

    Runs in fp32 (gradients for the attacks; the same numerics for every row). `images` are decoded uint8
    tensors (e.g. a `Split`'s), `targets` their fine class indices in the card's order.
    """
    from tqdm.auto import tqdm

    unknown = sorted(set(attacks) - {"fgsm", "pgd"})
    if unknown:  # before any work, and never a row that silently falls back to the clean photo
        raise ValueError(f"unknown attack(s) {', '.join(unknown)}: fgsm, pgd")
    if pgd_steps < 1 or batch_size < 1:
        raise ValueError(f"pgd_steps and batch_size must be >= 1, got {pgd_steps} and {batch_size}")
    device = device or next(net.parameters()).device
    net = net.float().eval().to(memory_format=torch.channels_last)  # CPU: channels-last convs are faster
    forward = fine_logits_fn(net, card.mean, card.std, device)
    view = pixel_view(card)
    corruptions = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    conditions: list[tuple[str, Any]] = [("clean", None)]
    conditions += [(a, e) for a in attacks for e in eps]
    conditions += [("corruption", (c, s)) for c in corruptions for s in severities]
    correct = {i: 0 for i in range(len(conditions))}
    linf = {i: 0.0 for i in range(len(conditions))}
    n_batches = math.ceil(len(images) / batch_size)
    bar = tqdm(total=n_batches * len(conditions), desc="robustness", disable=not progress, leave=False)
    for first, (x, y) in zip(range(0, len(images), batch_size), _batches(images, targets, view, batch_size),
                             strict=True):
        x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
        for i, (kind, arg) in enumerate(conditions):
            # each photo's random draws are its own under each condition (seed, condition, photo): a row does
            # not change with --batch-size or with which other conditions are measured beside it
            gens = [photo_generator(seed, kind, arg, first + j) for j in range(len(x))]
            if kind == "fgsm":
                xa = fgsm(forward, x, y, arg / 255)
            elif kind == "pgd":
                start = torch.cat([torch.rand((1, *x.shape[1:]), generator=gen) for gen in gens]) * 2 - 1
                xa = pgd(forward, x, y, arg / 255, steps=pgd_steps, start=start)
            elif kind == "corruption":
                xa = torch.cat([corrupt(x[j:j + 1], arg[0], arg[1], generator=gen) for j, gen in enumerate(gens)])
            else:
                xa = x
            with torch.no_grad():
                correct[i] += int((forward(xa).argmax(1) == y).sum())
            linf[i] = max(linf[i], float((xa - x).abs().max()) * 255)
            bar.update(1)
    bar.close()
    n = len(images)
    top1 = {i: correct[i] / max(1, n) for i in correct}
    attack_rows = tuple(
        AttackResult(kind, float(arg), pgd_steps if kind == "pgd" else 1, top1[i], round(linf[i], 4))
        for i, (kind, arg) in enumerate(conditions) if kind in ("fgsm", "pgd"))
    corruption_rows = tuple(
        CorruptionResult(arg[0], arg[1], float(CORRUPTIONS[arg[0]][1][arg[1] - 1]), top1[i])
        for i, (kind, arg) in enumerate(conditions) if kind == "corruption")
    settings = {"eps_unit": "pixel levels (x / 255), L-inf, before normalisation", "pgd_steps": pgd_steps,
                "pgd_step_size": "2.5 * eps / steps, random start", "seed": seed, "precision": "fp32",
                "corruption_levels": {c: {"levels": list(CORRUPTIONS[c][1]), "meaning": CORRUPTIONS[c][2]}
                                      for c in corruptions}}
    return RobustnessReport(top1[0], n, attack_rows, corruption_rows, settings)


def robustness_bundle(bundle: str | os.PathLike, data: str | os.PathLike, *, split: str = "val",
                      limit: int | None = None, device: str = "auto", progress: bool = True,
                      **kwargs: Any) -> RobustnessReport:
    """`evaluate_robustness` on a catalogue split (the first `limit` photos after a shuffle seeded by `seed`)."""
    import random

    from ..data.catalogue import CatalogueError
    from ..data.splits import prepare_split
    from ..models.bundle import load_bundle
    from ..models.inference import resolve_device
    from .heldout import card_catalogue

    dev = resolve_device(device)
    net, card = load_bundle(bundle, dev)
    samples = list(card_catalogue(data, card).split(split))  # a generated val is the training run's
    if limit:
        random.Random(kwargs.get("seed", 0)).shuffle(samples)  # the seed chooses the sample too
        samples = samples[:limit]
    target = prepare_split(samples, card, desc=split, progress=progress)
    if not target.images:
        raise CatalogueError(f"{split}: no decodable images")
    report = evaluate_robustness(net, card, target.images, target.fine.numpy(), device=dev, progress=progress,
                                 **kwargs)
    settings = {**report.settings, "bundle": str(bundle), "data": str(data), "split": split, "limit": limit}
    return RobustnessReport(report.clean_top1, report.n_images, report.attacks, report.corruptions, settings)


def to_markdown(report: RobustnessReport, title: str = "Robustness") -> str:
    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    lines = [f"# {title}", "", (f"{report.n_images} images; clean top-1 **{pct(report.clean_top1)}**. "
                                "eps in pixel levels (L-inf, x/255, before normalisation)."), ""]
    eps = sorted({a.eps for a in report.attacks})
    if eps:
        kinds = list(dict.fromkeys(a.attack for a in report.attacks))
        lines += ["| attack | " + " | ".join(f"eps {e:g}" for e in eps) + " |", "|---|" + "---|" * len(eps)]
        for k in kinds:
            steps = next(a.steps for a in report.attacks if a.attack == k)
            label = f"PGD-{steps}" if k == "pgd" else k.upper()
            lines.append(f"| {label} | " + " | ".join(pct(report.attack_top1(k, e)) for e in eps) + " |")
        lines.append("")
    if report.corruptions:
        sev = sorted({c.severity for c in report.corruptions})
        lines += ["| corruption | " + " | ".join(f"severity {s}" for s in sev) + " | mean |",
                  "|---|" + "---|" * (len(sev) + 1)]
        for name, mean in report.corruption_mean().items():
            row = {c.severity: c.top1 for c in report.corruptions if c.corruption == name}
            lines.append(f"| {name} | " + " | ".join(pct(row[s]) for s in sev) + f" | {pct(mean)} |")
    return "\n".join(lines) + "\n"


def plot(report: RobustnessReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in dict.fromkeys(a.attack for a in report.attacks):
        rows = sorted((a for a in report.attacks if a.attack == kind), key=lambda a: a.eps)
        a1.plot([0] + [a.eps for a in rows], [report.clean_top1] + [a.top1 for a in rows], marker="o",
                label=f"PGD-{rows[0].steps}" if kind == "pgd" else kind.upper())
    a1.set(xlabel="eps (pixel levels, /255)", ylabel="top-1", title="adversarial", ylim=(0, 1))
    a1.legend()
    for name in dict.fromkeys(c.corruption for c in report.corruptions):
        rows = sorted((c for c in report.corruptions if c.corruption == name), key=lambda c: c.severity)
        a2.plot([0] + [c.severity for c in rows], [report.clean_top1] + [c.top1 for c in rows], marker="o",
                label=name)
    a2.set(xlabel="severity (0 = clean)", ylabel="top-1", title="corruptions", ylim=(0, 1))
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_robustness(report: RobustnessReport, out: str | os.PathLike, *, title: str = "Robustness") -> Path:
    """robustness.json, robustness.md and robustness.png in `out`."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "robustness.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    (d / "robustness.md").write_text(to_markdown(report, title) + "\n![robustness](robustness.png)\n",
                                     encoding="utf-8")
    plot(report, d / "robustness.png")
    return d
