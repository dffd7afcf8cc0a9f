"""Batched inference over decoded images: probabilities for every head, and embeddings."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import SkuModel
from .options import PRECISIONS

if TYPE_CHECKING:
    from .card import ModelCard

__all__ = [
    "COARSE_RULES",
    "DeviceError",
    "HeadOutputs",
    "PrecisionError",
    "Runner",
    "TorchRunner",
    "autocast_context",
    "card_coarse",
    "collect_outputs",
    "combine_coarse",
    "derive_coarse_probs",
    "head_probabilities",
    "iter_batches",
    "resolve_device",
    "run_heads",
]


@dataclass(frozen=True)
class HeadOutputs:
    fine: np.ndarray  # N x C probabilities
    coarse_head: np.ndarray | None  # N x K from the coarse head
    attributes: np.ndarray | None  # N x A sigmoid probabilities
    embeddings: np.ndarray | None  # N x D, L2-normalised


class DeviceError(RuntimeError):
    """A device that is not a device name, or not on this machine (a user error: exit 2 in the CLI)."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r}: give auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def precision_used(device: torch.device, precision: str = "auto", *, training: bool = False) -> str:
    """The numerics `autocast_context` runs in: bf16, fp16 or fp32 ("auto" resolved for this device).

    bf16 where the hardware runs it fast; fp16 on GPUs without bf16. On the CPU, "auto" means bf16 for inference
    on CPUs with AVX512-BF16/AMX (measured here: Lite2 forward 1.8x faster) but fp32 for training: bf16 made
    EfficientNet-Lite training steps slower on the same machine (depthwise stride-2 convolution backward is ~4x
    slower in bf16), so it is opt-in there.
    """
    if precision == "off":
        return "fp32"
    if device.type == "cuda":
        return "fp16" if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()) else "bf16"
    return "bf16" if precision == "bf16" or (precision == "auto" and not training and cpu_has_fast_bf16()) else "fp32"


def autocast_context(device: torch.device, precision: str = "auto", *, training: bool = False
                     ) -> contextlib.AbstractContextManager:
    """An autocast in `precision_used`'s numerics (none for fp32)."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast is for CUDA; use bf16 or off on the CPU")
    used = precision_used(device, precision, training=training)
    if used == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.type == "cuda" else "cpu",
                          dtype=torch.bfloat16 if used == "bf16" else torch.float16)


def cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch
        return False


def derive_coarse_probs(fine: np.ndarray, fine_to_coarse: Sequence[int], n_coarse: int) -> np.ndarray:
    out = np.zeros((fine.shape[0], n_coarse), dtype=np.float64)
    np.add.at(out.T, np.asarray(fine_to_coarse), fine.T)
    # Renormalise: float32 probabilities summed in float64 can exceed 1 by ~1e-9.
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)


COARSE_RULES = ("combined", "fine", "head")


def combine_coarse(fine: np.ndarray, coarse_head: np.ndarray | None, fine_to_coarse: Sequence[int],
                   n_coarse: int, rule: str = "combined") -> np.ndarray | None:
    """The coarse prediction under `rule` (chosen on val at the end of training, kept in the card):

    combined: mean of the coarse head and the fine probabilities summed per coarse class;
    fine: the summed fine probabilities only; head: the coarse head only. Falls back to what exists.
    """
    if rule not in COARSE_RULES:
        raise ValueError(f"unknown coarse rule {rule!r}: {', '.join(COARSE_RULES)}")
    if not n_coarse or not len(fine_to_coarse):
        return coarse_head
    derived = derive_coarse_probs(fine, fine_to_coarse, n_coarse)
    if coarse_head is None or rule == "fine":
        return derived
    return coarse_head if rule == "head" else 0.5 * (derived + coarse_head)


def card_coarse(out: HeadOutputs, card: ModelCard) -> np.ndarray | None:
    """The coarse probabilities of `out` in `card.coarse_classes` order, under the card's coarse rule."""
    return combine_coarse(out.fine, out.coarse_head, card.fine_to_coarse, len(card.coarse_classes), card.coarse_rule)


def head_probabilities(model: SkuModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Probabilities of every head plus the L2-normalised embedding, for one preprocessed batch.

    The one definition of "what the model outputs": PyTorch inference and the ONNX/TorchScript exports
    both run it, so the backends cannot disagree on post-processing.
    """
    pooled = model.backbone(x)
    out = model.forward_head(pooled)
    t = model.temperature
    res = {"fine": (out["fine"].float() / t[0]).softmax(-1)}
    if "coarse" in out:
        res["coarse"] = (out["coarse"].float() / t[1]).softmax(-1)
    if "attributes" in out:
        res["attributes"] = out["attributes"].float().sigmoid()
    res["embedding"] = F.normalize(pooled.float(), dim=-1)
    return res


def iter_batches(images: Sequence[torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int, *, progress: bool = False, desc: str = "infer") -> Iterator[torch.Tensor]:
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        yield torch.stack([transform(im) for im in images[start:start + batch_size]])


def collect_outputs(batches: Sequence[dict[str, np.ndarray]], n_classes: int, embeddings: bool) -> HeadOutputs:
    def cat(key: str) -> np.ndarray | None:
        parts = [b[key] for b in batches if key in b]
        return np.concatenate(parts).astype(np.float64) if parts else None

    fine = cat("fine")
    return HeadOutputs(fine if fine is not None else np.zeros((0, n_classes)), cat("coarse"), cat("attributes"),
                       cat("embedding") if embeddings else None)


@torch.no_grad()
def run_heads(model: SkuModel, images: Sequence[torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor],
              *, batch_size: int = 64, device: torch.device | None = None, precision: str = "auto",
              embeddings: bool = False, channels_last: bool = True, progress: bool = False) -> HeadOutputs:
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = []
    for x in iter_batches(images, transform, batch_size, progress=progress):
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            out = head_probabilities(model, x)
        batches.append({k: v.float().cpu().numpy() for k, v in out.items()})
    model.train(was_training)
    return collect_outputs(batches, model.head.out_features, embeddings)


class Runner(Protocol):
    """Computes head outputs for decoded images: PyTorch here, ONNX Runtime in skulens.deploy.onnx."""

    def __call__(self, images: Sequence[torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor], *,
                 batch_size: int, embeddings: bool, progress: bool) -> HeadOutputs: ...


class PrecisionError(DeviceError, ValueError):
    """A precision this device cannot run: a ValueError as before, and a user error (one line) in the CLI."""


def check_precision(precision: str, device: torch.device) -> str:
    """A precision autocast_context knows, for this device (ValueError otherwise: an unknown one would run as
    "auto", and fp16 on the CPU would fail at the first batch)."""
    if precision not in PRECISIONS:
        hint = " (full precision is 'off')" if precision in ("fp32", "float32") else ""
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}{hint}")
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError("precision fp16 is for CUDA; use bf16 or off on the CPU")
    return precision



class TorchRunner:
    def __init__(self, net: SkuModel, device: torch.device, precision: str = "auto"):
        self.net, self.device, self.precision = net, device, check_precision(precision, device)

    def __call__(self, images: Sequence[torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor], *,
                 batch_size: int = 32, embeddings: bool = False, progress: bool = False) -> HeadOutputs:
        return run_heads(self.net, images, transform, batch_size=batch_size, device=self.device,
                         precision=self.precision, embeddings=embeddings, progress=progress)
