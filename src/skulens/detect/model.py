"""The class-agnostic product detector: torchvision FCOS over a feature pyramid on EfficientNet-Lite.

Everything detection-specific comes from `torchvision.models.detection` (FCOS head and loss, the
resize/normalise transform, anchor points, box decoding, NMS) and `torchvision.ops` (the feature
pyramid). skulens supplies the backbone taps (the bundled ImageNet EfficientNet-Lite weights, since
no detection weights can be downloaded) and the narrow, CPU-sized head.

A detector folder holds `detector.safetensors` and `detector.json` (this config plus the training
record), and `detector.onnx` once exported; loading never unpickles.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.backbones import create_architecture, create_backbone, get_spec
from ..models.bundle import atomic_save_tensors, atomic_write_text
from .options import DETECTOR_ONNX

__all__ = ["DETECTOR_CARD", "DETECTOR_ONNX", "DETECTOR_WEIGHTS", "DetectorCard", "DetectorConfig", "DetectorError", "build_detector",
           "is_detector", "load_detector_net", "save_detector"]

DETECTOR_WEIGHTS = "detector.safetensors"
DETECTOR_CARD = "detector.json"
SCHEMA = 1


class DetectorError(RuntimeError):
    """A detector folder is missing, incomplete or does not fit its card."""


@dataclass(frozen=True)
class DetectorConfig:
    """The architecture and its inference settings (all stored in detector.json).

    min_size / max_size: photos are resized so the short side is min_size, the long side at most
    max_size (torchvision's GeneralizedRCNNTransform). max_detections is the box cap per pass: a photo
    that has more is reported as capped, never silently truncated.
    """

    backbone: str = "efficientnet_lite0"
    fpn_channels: int = 64
    head_convs: int = 2
    frozen_blocks: int = 2  # the stem and the first N blocks keep their ImageNet weights
    min_size: int = 512
    max_size: int = 896
    score_floor: float = 0.05  # candidates below this never leave the network
    min_score: float = 0.5  # a box at or above this counts as a product; training picks it on held-out canvases
    nms_iou: float = 0.5
    contained_ios: float = 0.85  # a box this much inside a better, 1.5x larger one is a part of it (0: off)
    max_detections: int = 1000
    topk_candidates: int = 2000
    center_sampling_radius: float = 1.5

    def __post_init__(self) -> None:
        if self.fpn_channels < 64 or self.fpn_channels % 32:
            # The head's GroupNorm has 32 groups: one channel per group would fail on a 1x1 P7 map.
            raise ValueError(f"fpn_channels must be a multiple of 32 and >= 64, got {self.fpn_channels}")
        if not 1 <= self.head_convs <= 4:
            raise ValueError(f"head_convs must be 1..4, got {self.head_convs}")
        if not 64 <= self.min_size <= self.max_size:
            raise ValueError(f"need 64 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if not 0 <= self.score_floor < 1 or not 0 < self.nms_iou <= 1 or not 0 <= self.min_score <= 1:
            raise ValueError("score_floor must be in [0, 1), nms_iou in (0, 1] and min_score in [0, 1]")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {self.max_detections}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class LiteFeaturePyramid(nn.Module):
    """EfficientNet-Lite tapped at strides 8/16/32, then an FPN with P6/P7 (FCOS' five levels).

    The stem, the first `frozen_blocks` blocks and every batch norm stay frozen: detection batches on a
    CPU are a handful of canvases, far too few to re-estimate ImageNet statistics.
    """

    def __init__(self, body: nn.Module, channels: int, frozen_blocks: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        info = {d["reduction"]: d for d in body.feature_info}  # the last block at each stride
        self.taps = [int(info[r]["module"].split(".")[1]) for r in (8, 16, 32)]
        self.body = body
        self.fpn = FeaturePyramidNetwork([info[r]["num_chs"] for r in (8, 16, 32)], channels,
                                         extra_blocks=LastLevelP6P7(channels, channels))
        self.out_channels = channels
        frozen = [body.conv_stem, body.bn1, *list(body.blocks)[:frozen_blocks]]
        for module in frozen:
            module.requires_grad_(False)
        for module in body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> LiteFeaturePyramid:
        super().train(mode)
        for module in self.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        b = self.body
        # The weights are channels-last (build_detector): oneDNN's convolutions then run without
        # reordering every map: a training step 1.2-1.4x faster on a 2-core CPU (RESULTS.md).
        x = b.bn1(b.conv_stem(x.contiguous(memory_format=torch.channels_last)))
        feats = OrderedDict()
        for i, block in enumerate(b.blocks):
            x = block(x)
            if i in self.taps:
                feats[str(len(feats))] = x
            if i == self.taps[-1]:
                break
        return self.fpn(feats)


def build_detector(config: DetectorConfig | None = None, *, pretrained: bool = True) -> nn.Module:
    """An FCOS detector with one "product" class (label 0) over the bundled ImageNet backbone.

    pretrained=False builds the bare architecture, for loading a detector's own weights.
    """
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    config = config or DetectorConfig()
    backbone = create_backbone(config.backbone) if pretrained else create_architecture(config.backbone)
    if backbone.spec.arch.split(":", 1)[0] != "timm" or not hasattr(backbone.body, "blocks"):
        raise DetectorError(f"{config.backbone}: the detector needs an EfficientNet-style timm backbone")
    body = backbone.body
    pyramid = LiteFeaturePyramid(body, config.fpn_channels, config.frozen_blocks)
    # Drop what the pyramid never runs (conv_head, the classifier), so the weights file holds only
    # what detection uses.
    for name in ("conv_head", "bn2", "global_pool", "classifier"):
        if hasattr(body, name):
            setattr(body, name, nn.Identity())
    spec = get_spec(config.backbone)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((1.0,),) * 5)
    head = FCOSHead(config.fpn_channels, 1, 1, num_convs=config.head_convs)
    net = FCOS(pyramid, num_classes=1, min_size=config.min_size, max_size=config.max_size,
               image_mean=list(spec.mean), image_std=list(spec.std), anchor_generator=anchors, head=head,
               center_sampling_radius=config.center_sampling_radius, score_thresh=config.score_floor,
               nms_thresh=config.nms_iou, detections_per_img=config.max_detections,
               topk_candidates=config.topk_candidates)
    # Channels-last weights and maps (the pyramid turns its input): the layout oneDNN's convolutions
    # want on a CPU. Values are the same; save_detector writes plain contiguous tensors.
    return net.to(memory_format=torch.channels_last)


@dataclass
class DetectorCard:
    """detector.json: what the detector is and how it was made."""

    config: DetectorConfig
    training: dict[str, Any] = field(default_factory=dict)  # recipe, data, steps, held-out metrics
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps({"schema": self.schema, "kind": "skulens-detector", "config": asdict(self.config),
                           "training": self.training}, indent=2)

    @classmethod
    def read(cls, path: Path) -> DetectorCard:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: JSON errors and bytes that are not UTF-8
            raise DetectorError(f"{path}: not a readable detector card ({e})") from None
        if not isinstance(d, dict) or d.get("kind") != "skulens-detector":
            raise DetectorError(f"{path}: not a skulens detector card")
        schema = d.get("schema", SCHEMA)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise DetectorError(f"{path}: written by a newer skulens (schema {schema!r}); upgrade skulens")
        config, training = d.get("config", {}), d.get("training", {})
        if not isinstance(config, dict) or not isinstance(training, dict):
            raise DetectorError(f"{path}: 'config' and 'training' must be JSON objects")
        try:
            return cls(DetectorConfig.from_dict(config), training, schema)
        except (TypeError, ValueError) as e:  # a hand-edited value: "min_score": 2, "min_size": "abc"
            raise DetectorError(f"{path}: invalid detector settings ({e})") from None


def is_detector(path: str | os.PathLike) -> bool:
    return (Path(path) / DETECTOR_CARD).is_file()


def save_detector(net: nn.Module, card: DetectorCard, directory: str | os.PathLike) -> Path:
    """Write weights then card (the card last: a folder with a card is complete). An exported detector.onnx
    there is of the old weights, and would run with the new card: it is removed first."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / DETECTOR_ONNX).unlink(missing_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_save_tensors(state, out / DETECTOR_WEIGHTS, metadata={"format": "pt", "skulens": "detector"})
    atomic_write_text(out / DETECTOR_CARD, card.to_json())
    return out


def load_detector_net(directory: str | os.PathLike) -> tuple[nn.Module, DetectorCard]:
    """The network (eval mode, CPU) and card of a detector folder; strict: every tensor must fit."""
    from safetensors.torch import load_file

    d = Path(directory)
    if d.is_file() and d.suffix.lower() == ".onnx":  # an export: ONNX Runtime runs it, not this loader
        raise DetectorError(f"{d}: an exported detector (ONNX): load it with backend='onnx' (--backend onnx)")
    if not d.is_dir():
        raise DetectorError(f"{d}: no such detector folder (train one with `skulens detect train`)")
    if not (d / DETECTOR_CARD).is_file() or not (d / DETECTOR_WEIGHTS).is_file():
        raise DetectorError(f"{d}: not a detector folder (needs {DETECTOR_CARD} and {DETECTOR_WEIGHTS}); "
                            "a classification bundle goes to --model, a detector to --detector")
    card = DetectorCard.read(d / DETECTOR_CARD)
    net = build_detector(card.config, pretrained=False)
    try:
        net.load_state_dict(load_file(str(d / DETECTOR_WEIGHTS)))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a corrupt file
        raise DetectorError(f"{d / DETECTOR_WEIGHTS}: does not fit its card ({str(e)[:300]})") from None
    return net.eval(), card
