"""The detector under ONNX Runtime.

The exported graph is the dense part (backbone, feature pyramid, FCOS head): a normalised, padded batch
in; class logits, box regressions, centerness and one thin slice per pyramid level (whose shape gives
the anchor grid) out. Resizing, anchor points, box decoding and NMS stay in torchvision on the host, so
the ONNX detector and the PyTorch one share every line after the network.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.onnx_runtime import unreadable_onnx
from .detector import Detector
from .model import (
    DETECTOR_CARD,
    DETECTOR_ONNX,
    DETECTOR_WEIGHTS,
    DetectorCard,
    DetectorError,
    build_detector,
    load_detector_net,
)
from .options import onnx_export_advice

__all__ = ["export_detector", "load_onnx_detector"]

OUTPUTS = ["cls_logits", "bbox_regression", "bbox_ctrness", "p3", "p4", "p5", "p6", "p7"]


class _Dense(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.backbone, self.head = net.backbone, net.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = list(self.backbone(x).values())
        out = self.head(feats)
        return (out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"],
                *(f[:, :1] for f in feats))


def export_detector(directory: str | os.PathLike, out: str | os.PathLike | None = None, *, opset: int = 17
                    ) -> Path:
    """Write the detector's dense network as ONNX (batch, height and width dynamic); checked by loading
    it in ONNX Runtime and comparing boxes with PyTorch on a test canvas. A failed export or check leaves
    no file (and an older export at `out` as it was). An `out` in another folder gets the detector's card
    (detector.json) beside it, which `load_onnx_detector` reads: the card of the export it replaces, or a new
    one; a folder whose card belongs to another .onnx there is refused before anything is written."""
    net, card = load_detector_net(directory)
    path = Path(out) if out else Path(directory) / DETECTOR_ONNX
    if path.is_dir():
        raise DetectorError(f"{path}: a folder; name the .onnx file to write (e.g. {path / DETECTOR_ONNX})")
    if path.suffix.lower() != ".onnx":  # detector.safetensors or detector.json would be overwritten
        raise DetectorError(f"{path}: name a .onnx file to write (e.g. {path.parent / DETECTOR_ONNX})")
    if path.parent.exists() and not path.parent.is_dir():
        raise DetectorError(f"{path.parent}: a file, not a folder")
    source_card, target_card = Path(directory) / DETECTOR_CARD, path.parent / DETECTOR_CARD
    elsewhere = not (target_card.exists() and target_card.resolve() == source_card.resolve())
    if elsewhere and (path.parent / DETECTOR_WEIGHTS).exists():
        raise DetectorError(f"{path.parent} holds another detector: its card would be replaced by this one's; "
                            "export into a folder of its own")
    if elsewhere and target_card.exists() and target_card.read_bytes() != source_card.read_bytes():
        others = sorted(p.name for p in path.parent.glob("*.onnx") if p.name != path.name)
        if others:  # their card would change under them
            raise DetectorError(f"{target_card}: the card of {', '.join(others)} is there, which {path.name} "
                                "would replace; export into a folder of its own")
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, card.config.min_size, card.config.min_size)
    dyn = {"images": {0: "batch", 2: "height", 3: "width"}}
    dyn.update({name: {0: "batch", 1: "anchors"} for name in OUTPUTS[:3]})
    dyn.update({name: {0: "batch", 2: f"{name}_h", 3: f"{name}_w"} for name in OUTPUTS[3:]})
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.onnx.export(_Dense(net).eval(), (x,), str(tmp), input_names=["images"], output_names=OUTPUTS,
                          dynamic_axes=dyn, opset_version=opset, dynamo=False)
        _check(net, card, tmp)
        os.replace(tmp, path)
        if elsewhere:  # after the graph is in place: a failed export leaves no card behind
            from ..models.bundle import atomic_write_text

            atomic_write_text(target_card, source_card.read_text(encoding="utf-8"))
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check(net: nn.Module, card: DetectorCard, path: Path) -> None:
    """The ONNX graph must give PyTorch's dense outputs (class logits, box regression, centre-ness at every
    location: never a vacuous check, even where nothing is detected) and then the same boxes and scores on a
    random photo-sized input."""
    image = torch.rand(3, 300, 400, generator=torch.Generator().manual_seed(0))
    x = net.transform([image])[0].tensors  # what the graph sees inside the detector: resized and normalised
    with torch.inference_mode():
        want = [t.numpy() for t in _Dense(net).eval()(x)[:3]]
    onnx_net = _onnx_net(path, card)  # one ONNX Runtime session for both checks
    got = onnx_net.backbone.session.run(OUTPUTS[:3], {"images": x.numpy().astype(np.float32)})
    for name, a, b in zip(OUTPUTS, want, got):
        if a.shape != b.shape or not np.allclose(a, b, atol=2e-3, rtol=1e-3):
            raise DetectorError(f"{path}: the ONNX graph does not reproduce PyTorch's {name}")
    a = Detector(net, card, device="cpu")._run([image])[0]
    b = Detector(onnx_net, card, device="cpu")._run([image])[0]
    n = min(len(a[1]), len(b[1]), 20)
    if len(a[1]) != len(b[1]) or (n and not (np.allclose(a[1][:n], b[1][:n], atol=2e-3)
                                             and np.allclose(a[0][:n], b[0][:n], atol=0.5))):
        raise DetectorError(f"{path}: the ONNX graph does not reproduce PyTorch's detections")


class _OrtBackbone(nn.Module):
    """Runs the ONNX session in place of backbone + head; the head then hands over its outputs."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        outs = self.session.run(None, {"images": x.detach().cpu().numpy().astype(np.float32)})
        self.last = {"cls_logits": torch.from_numpy(outs[0]), "bbox_regression": torch.from_numpy(outs[1]),
                     "bbox_ctrness": torch.from_numpy(outs[2])}
        return OrderedDict((str(i), torch.from_numpy(o)) for i, o in enumerate(outs[3:]))


class _OrtHead(nn.Module):
    def __init__(self, backbone: _OrtBackbone):
        super().__init__()
        self.source = [backbone]  # a list: not registered as a submodule twice

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.source[0].last


def load_onnx_detector(path: str | os.PathLike, *, threads: int | None = None) -> Detector:
    """A Detector whose network runs under ONNX Runtime: a detector folder (with detector.onnx) or the
    .onnx file beside its detector.json."""
    p = Path(path)
    onnx_path = p / DETECTOR_ONNX if p.is_dir() else p
    folder = onnx_path.parent
    if not onnx_path.is_file():
        advice = onnx_export_advice(folder) if p.is_dir() else f"run `skulens detect export {folder}` first"
        raise DetectorError(f"{onnx_path}: no ONNX detector; {advice}")
    card = DetectorCard.read(folder / DETECTOR_CARD)
    return Detector(_onnx_net(onnx_path, card, threads), card, device="cpu", path=folder)


def _onnx_net(onnx_path: Path, card: DetectorCard, threads: int | None = None) -> nn.Module:
    """torchvision's FCOS (transform, anchors, decoding, NMS) around an ONNX Runtime session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a file onnxruntime cannot parse is the user's, as a bundle's model.onnx
        first = unreadable_onnx(exc)
        if first is None:
            raise
        raise DetectorError(f"{onnx_path}: not a readable ONNX detector (corrupt or truncated: {first}); export it "
                            f"again with `skulens detect export {onnx_path.parent}`") from None
    net = build_detector(card.config, pretrained=False)
    backbone = _OrtBackbone(session)
    net.backbone, net.head = backbone, _OrtHead(backbone)
    return net.eval()
