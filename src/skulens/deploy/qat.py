"""Quantization-aware fine-tuning of the weights before an int8 export (`skulens export --int8 --qat`).

A static int8 file rounds every convolution's weights to 255 levels per output channel (scale = max|w| / 127,
symmetric: the scheme of both LiteRT's and ONNX Runtime's per-channel int8). A distilled Lite0 has thin margins
on other stores' photos, and that rounding alone moves some of its answers. Here the backbone is fine-tuned
for a short while *through* that rounding, so that its int8 weights, not its float ones, give the fp32
model's answers:

1. every BatchNorm is folded into the convolution before it (the converters fold it too, after rounding
   would be too late), leaving the BatchNorm an identity that carries the folded shift as its bias; the
   folded model is checked to give the same outputs;
2. each backbone convolution's weight is seen through a per-channel symmetric int8 fake-quantizer
   (`torch.fake_quantize_per_channel_affine`, straight-through gradients) as a `torch.nn.utils.parametrize`
   parametrization;
3. the backbone (not the heads, which stay float in the int8 files) is trained with AdamW at a small learning
   rate to match the fp32 model's fine logits (mean squared error) on augmented train photos, the model in
   eval mode (BatchNorm is folded, dropout off);
4. the rounded weights are baked in (`remove_parametrizations(leave_parametrized=True)`) and the result saved
   as a bundle: its float weights sit on the int8 grid, so quantizing them loses nothing more.

Activations are not simulated: their ranges come from calibration as before. On grocery, the Lite0 student's
LiteRT int8 went from 248 to 252 of the 296 val photos right (fp32: 252; 251 when fine-tuned without a 15 %
train hold-out, whose probabilities then moved half as much as under plain int8): benchmarks/RESULTS.md,
"Quantization-aware fine-tuning before LiteRT int8".
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["PerChannelInt8", "QatResult", "fold_batchnorm", "qat_bundle", "qat_finetune"]

# A folded model may differ from the original by float reassociation only; beyond this it was not a plain
# conv -> BatchNorm chain and the fold is refused.
FOLD_TOLERANCE = 1e-3


class PerChannelInt8(nn.Module):
    """Per-output-channel symmetric int8 fake-quantization of a conv weight (levels -127..127)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = (w.detach().abs().amax(dim=tuple(range(1, w.dim()))) / 127).clamp_min(1e-12)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


def fold_batchnorm(backbone: nn.Module) -> list[nn.Conv2d]:
    """Fold each BatchNorm2d into the Conv2d just before it (in module order), in place; the BatchNorm is left
    an identity scale with the folded shift. Returns the folded convolutions. Only eval-mode use is valid."""
    folded: list[nn.Conv2d] = []
    last: nn.Conv2d | None = None
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, nn.Conv2d):
                last = module
            elif isinstance(module, nn.BatchNorm2d):
                if last is None or last.out_channels != module.num_features or not module.affine \
                        or module.running_var is None or module.running_mean is None:
                    raise ValueError(f"cannot fold {module}: no matching convolution right before it")
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                last.weight.mul_(scale.view(-1, *([1] * (last.weight.dim() - 1))))
                if last.bias is not None:
                    module.running_mean.sub_(last.bias)  # (conv(x) + b - mean): the conv's bias joins the shift
                    last.bias.zero_()
                module.bias.copy_(module.bias - module.running_mean * scale)
                module.weight.fill_(1.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)
                folded.append(last)
                last = None
    return folded


@dataclass(frozen=True)
class QatResult:
    out: Path  # the bundle with int8-grid weights
    convolutions: int  # convolutions trained through the int8 rounding
    steps: int
    seconds: float
    fold_max_diff: float  # max |logit| change from folding BatchNorm (float reassociation only)


def qat_finetune(model: nn.Module, loader: Sequence[torch.Tensor] | torch.utils.data.DataLoader, *, steps: int,
                 lr: float = 1e-5, progress: Callable[[int, float], None] | None = None,
                 check: torch.Tensor | None = None) -> tuple[nn.Module, int, float]:
    """(the model with its backbone weights on the int8 grid, convolutions tuned, fold max diff).

    `model` is a SkuModel (a `backbone` and heads; called on a batch it returns a dict with `fine`); it is not
    changed. `loader` yields batches whose first item is the preprocessed image batch; it is cycled for
    `steps` AdamW steps. `check` (a preprocessed batch) verifies the BatchNorm fold."""
    model = copy.deepcopy(model).eval()
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    fold_batchnorm(model.backbone)
    diff = 0.0
    if check is not None:
        with torch.no_grad():
            diff = float((model(check)["fine"] - teacher(check)["fine"]).abs().max())
        if diff > FOLD_TOLERANCE:
            raise ValueError(f"folding BatchNorm changed the logits by {diff:.2g}: this backbone is not a plain "
                             "conv -> BatchNorm chain")
    quantized = [c for c in model.backbone.modules() if isinstance(c, nn.Conv2d)]
    for conv in quantized:
        parametrize.register_parametrization(conv, "weight", PerChannelInt8())
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.backbone.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    step = 0
    while step < steps:
        before = step
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            with torch.no_grad():
                target = teacher(x)["fine"]
            loss = F.mse_loss(model(x)["fine"], target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress is not None:
                progress(step, loss.item())
            if step >= steps:
                break
        if step == before:
            raise ValueError("quantization-aware fine-tuning got no batches from its loader")
    for conv in quantized:
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, len(quantized), diff


def qat_bundle(bundle: str | os.PathLike[str], out: str | os.PathLike[str], samples: Sequence[object], *,
               epochs: float = 1.0, lr: float = 1e-5, batch_size: int = 32, augment: str = "strong", seed: int = 0,
               progress: bool = False) -> QatResult:
    """Quantization-aware fine-tune of `bundle` on `samples` (catalogue Samples, usually train; their labels
    are not used: the fp32 model is the teacher), saved as a bundle in `out`."""
    from tqdm.auto import tqdm

    from ..data.dataset import TensorImageDataset
    from ..data.splits import prepare_split
    from ..data.transforms import create_transform
    from ..models.bundle import load_bundle, save_bundle

    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    if not samples:
        raise ValueError("quantization-aware fine-tuning needs photos (the train split is empty)")
    model, card = load_bundle(bundle)
    split = prepare_split(list(samples), card, desc="qat photos", progress=progress)  # type: ignore[arg-type]
    ds = TensorImageDataset(split.images, split.fine, split.coarse, split.attributes,
                            create_transform(card, train=True, augment=augment))
    g = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(ds))
    loader = torch.utils.data.DataLoader(ds, batch_size=size, shuffle=True, drop_last=True, generator=g)
    steps = max(1, round(epochs * len(loader)))
    evaluation = create_transform(card)
    check = torch.stack([evaluation(im) for im in split.images[: min(8, len(split.images))]])
    bar = tqdm(total=steps, desc="quantization-aware fine-tune", disable=not progress, unit="step")

    def tick(_: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    start = time.perf_counter()
    try:
        with torch.random.fork_rng():  # the augmentations draw from the global generator: seeded, then put back
            torch.manual_seed(seed)
            tuned, convs, diff = qat_finetune(model, loader, steps=steps, lr=lr, progress=tick, check=check)
    finally:
        bar.close()
    path = save_bundle(tuned, card, out)  # type: ignore[arg-type]
    return QatResult(path, convs, steps, time.perf_counter() - start, diff)
