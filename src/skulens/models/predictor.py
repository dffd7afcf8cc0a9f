"""The model object: a bundle's network and card, the decision rule, and the loaders that build one.

`Model.predict` decodes images, runs the heads (PyTorch or ONNX Runtime, one `Runner` interface) and turns
probabilities into `Prediction`s with `decide`, the one decision rule (the REST service uses it too).
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..data.decode import ImageDecodeError, decode_any
from ..data.transforms import create_transform, to_uint8_tensor
from .bundle import BundleError, load_bundle
from .card import ModelCard, without_conflicts
from .inference import (
    DeviceError,
    HeadOutputs,
    Runner,
    TorchRunner,
    card_coarse,
    check_precision,
    precision_used,
    resolve_device,
)
from .options import MODEL_BACKENDS, check_precision_backend, is_device_name

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..evaluate.metrics import EvalReport

__all__ = ["PRETRAINED_PREFIX", "FusionError", "ImageInput", "Model", "Prediction", "check_images", "decide", "load_model",
           "load_onnx", "load_tflite", "pretrained_model", "source_name"]

ImageInput = str | os.PathLike | bytes | Image.Image


class FusionError(BundleError, ValueError):
    """The bundle's fusion head is missing or was trained for other classes (a ValueError, as before; a bundle
    error, one line, in the CLI)."""


@dataclass(frozen=True)
class Prediction:
    """One image's result. `label` is the decision: the fine label, the coarse label when the fine one is
    too uncertain (level "coarse"), or None when abstaining ("unknown") or the image failed ("error")."""

    source: str
    label: str | None
    level: str  # fine | coarse | unknown | error
    confidence: float
    fine_label: str | None = None
    fine_confidence: float = 0.0
    coarse_label: str | None = None
    coarse_confidence: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    attributes: tuple[tuple[str, float], ...] = ()  # attributes above their thresholds, with probabilities
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_k"] = [{"label": lab, "p": round(p, 6)} for lab, p in self.top_k]
        d["attributes"] = {a: round(p, 6) for a, p in self.attributes}
        return d


def decide(card: ModelCard, fine: np.ndarray, coarse: np.ndarray | None, attrs: np.ndarray | None,
            source: str, top_k: int, min_confidence: float) -> Prediction:
    order = np.argsort(-fine, kind="stable")[: max(1, top_k)]  # ties: the first class, as argmax and metrics
    f = int(order[0])
    fine_conf = float(fine[f])
    c_label = c_conf = None
    if coarse is not None:
        c = int(coarse.argmax())
        c_label, c_conf = card.coarse_classes[c], float(coarse[c])
    label, level, conf = card.classes[f], "fine", fine_conf
    if fine_conf < card.coarse_fallback and c_label is not None and c_conf is not None and c_conf > fine_conf:
        label, level, conf = c_label, "coarse", c_conf
    if conf < min_confidence:
        label, level = None, "unknown"
    attributes: tuple[tuple[str, float], ...] = ()
    if attrs is not None and card.attributes:
        thr = card.attribute_thresholds or (0.5,) * len(card.attributes)
        attributes = tuple((a, float(p)) for a, p, t in zip(card.attributes, attrs, thr, strict=True) if p >= t)
        if card.attribute_exclusive and len(attributes) > 1:
            attributes = without_conflicts(attributes, card.attribute_exclusive)
    return Prediction(source, label, level, conf, card.classes[f], fine_conf, c_label, c_conf,
                      tuple((card.classes[int(i)], float(fine[int(i)])) for i in order), attributes)


class Model:
    """A loaded bundle: classify, embed and evaluate images with the preprocessing it was trained with.

    `runner` computes the heads for decoded images; PyTorch by default, ONNX Runtime with
    `skulens.load(bundle, backend="onnx")`. Everything else (decoding, decisions, reports) is shared.
    """

    def __init__(self, net: torch.nn.Module | None, card: ModelCard, device: torch.device,
                 precision: str = "auto", runner: Runner | None = None):
        self.net, self.card, self.device, self.precision = net, card, device, precision
        self.path: Path | None = None  # the bundle folder, when loaded from one (side files: fusion head, ...)
        self.transform = create_transform(card)
        if runner is None:
            if net is None:
                raise ValueError("Model needs a network or a runner")
            runner = TorchRunner(net, device, precision)
        self.runner = runner
        # how its numbers are computed, for reports: the backends' numerics differ a little (bf16 vs fp32: 88.2 vs
        # 86.1 top-1 on grocery val); the exported backends' loaders name theirs
        self.numerics = f"pytorch {precision_used(device, precision)}" if net is not None else type(runner).__name__

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    def run(self, images: Sequence[torch.Tensor], *, embeddings: bool = False, batch_size: int = 32,
            progress: bool = False) -> HeadOutputs:
        """Head outputs for decoded uint8 CHW images (the card's preprocessing is applied here)."""
        return self.runner(images, self.transform, batch_size=batch_size, embeddings=embeddings,
                           progress=progress)

    def _decode(self, images: Sequence[ImageInput]) -> tuple[list[torch.Tensor], list[int], list[tuple[int, str]]]:
        check_images(images)
        tensors, ok, failed = [], [], []
        for i, im in enumerate(images):
            try:
                pil = decode_any(im, source_name(im, i), reduce_to=self.card.resize_to)
                tensors.append(to_uint8_tensor(pil))
                ok.append(i)
            except ImageDecodeError as e:
                failed.append((i, e.reason))
        return tensors, ok, failed

    def predict(self, images: Sequence[ImageInput], *, top_k: int | Sequence[int] = 5,
                min_confidence: float | Sequence[float] = 0.0, batch_size: int = 32, progress: bool = False,
                texts: Sequence[str | None] | None = None) -> list[Prediction]:
        """Predictions in input order; an image that cannot be decoded gets level "error" with the reason.

        images: a list of paths, bytes or PIL images (one on its own is refused: wrap it in a list); a PIL
        image is normalised as a file is (EXIF orientation, alpha on white, size limits).

        top_k, min_confidence: one value for every image, or one per image (the service batches requests
        that asked for different ones into one forward pass).

        texts: each photo's listing text (title/description; None or "" for none), classified with the
        bundle's image + text fusion head (`skulens fuse`) instead of the image classifier.
        """
        check_images(images)
        if not isinstance(images, Sequence):  # a generator: read once, here (names, decoding and results use it)
            images = list(images)
            check_images(images)
        if isinstance(texts, (str, bytes)):  # would be one character per image
            raise TypeError("texts: give a list, one text per image (None for none), not one string")
        if texts is not None and len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts for {len(images)} images: give one per image (None for none)")
        if not self.card.classes:
            raise ValueError("this model has no classifier (a plain pretrained backbone): use embed() or "
                             "search, or fine-tune it with `skulens train`")
        names = [source_name(im, i) for i, im in enumerate(images)]
        ks, mins = _per_image(top_k, len(images), "top_k"), _per_image(min_confidence, len(images), "min_confidence")
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"top_k must be a whole number >= 1, got {k!r}")
        for m in mins:
            if isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0 <= m <= 1:  # NaN fails too
                raise ValueError(f"min_confidence must be between 0 and 1, got {m!r}")
        tensors, ok, failed = self._decode(images)
        results: list[Prediction | None] = [None] * len(images)
        for i, reason in failed:
            results[i] = Prediction(names[i], None, "error", 0.0, error=reason)
        if tensors:
            out = self.run(tensors, batch_size=batch_size, progress=progress, embeddings=texts is not None)
            if texts is not None:
                out = self._fuse(out, [texts[i] for i in ok])
            coarse = card_coarse(out, self.card)
            for row, i in enumerate(ok):
                results[i] = decide(self.card, out.fine[row], None if coarse is None else coarse[row],
                                     None if out.attributes is None else out.attributes[row], names[i], ks[i],
                                     mins[i])
        return [r for r in results if r is not None]

    def _fuse(self, out: HeadOutputs, texts: list[str | None]) -> HeadOutputs:
        """Replace the fine probabilities by the fusion head's, from the image embedding and the text."""
        from dataclasses import replace

        from .fusion import load_fusion
        from .text import head_text_encoder

        fusion = load_fusion(self.path) if self.path is not None else None
        if fusion is None:
            raise FusionError("this bundle has no fusion head: train one with `skulens fuse --model BUNDLE --data ...`")
        head, classes = fusion.head, fusion.classes
        if classes != self.card.classes:
            raise FusionError("the fusion head was trained for other classes (enrolled or retrained since): "
                              "run `skulens fuse` again")
        assert out.embeddings is not None
        has = np.array([bool(t and t.strip()) for t in texts])
        enc = head_text_encoder(self.path, fusion.text_model, fusion.text_fingerprint, what="the fusion head",
                                refit=f"skulens fuse --model {self.path}")
        tv = np.zeros((len(texts), enc.dim), dtype=np.float32)
        if has.any():
            tv[has] = enc.encode([t for t in texts if t and t.strip()])
        probs = head.probabilities(out.embeddings, tv)
        if (~has).any():
            probs[~has] = head.probabilities(out.embeddings[~has], None)
        return replace(out, fine=probs.astype(np.float64))

    def embed(self, images: Sequence[ImageInput], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """L2-normalised embeddings (N x embedding_dim); undecodable images raise ImageDecodeError."""
        return self._embedded(images, batch_size, progress)[0]

    def embed_with_coarse(self, images: Sequence[ImageInput], *, batch_size: int = 32
                          ) -> tuple[np.ndarray, np.ndarray | None]:
        """`embed` and, from the same forward pass, the coarse-class probabilities (N x coarse classes, in
        `card.coarse_classes` order, under the card's coarse rule; None for a model without coarse classes)."""
        vectors, out = self._embedded(images, batch_size, False)
        return vectors, card_coarse(out, self.card)

    def _embedded(self, images: Sequence[ImageInput], batch_size: int, progress: bool
                  ) -> tuple[np.ndarray, HeadOutputs]:
        check_images(images)  # one path alone is refused before list() reads it letter by letter
        images = list(images)  # a generator: read once here, and indexable for the error below
        tensors, _, failed = self._decode(images)
        if failed:
            i, reason = failed[0]
            raise ImageDecodeError(source_name(images[i], i), reason)
        out = self.run(tensors, batch_size=batch_size, embeddings=True, progress=progress)
        return out.embeddings if out.embeddings is not None else np.zeros((0, self.card.embedding_dim)), out

    def evaluate(self, data: str | os.PathLike | None = None, *, split: str = "val",
                 out: str | os.PathLike | None = None, baseline: bool = False, progress: bool = True) -> EvalReport:
        """Evaluate on a catalogue split (default: the dataset recorded in the card); see `skulens.evaluate`."""
        # The evaluate stage sits above models/: reached lazily, and it imports this module only for types.
        from ..evaluate.evaluator import evaluate_model

        return evaluate_model(self, data, split=split, out=out, baseline=baseline, progress=progress)


_INPUT_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)


def check_images(images: Any) -> None:
    """`images` is a list of inputs: one path, bytes or PIL image on its own would be iterated as characters,
    bytes or pixel rows."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        raise TypeError(f"images: give a list of images (e.g. [{type(images).__name__}]), "
                        f"not one {type(images).__name__}")
    if isinstance(images, np.ndarray):
        raise TypeError("images: give a list of images (paths, bytes or PIL images), not a NumPy array "
                        "(Image.fromarray(a) makes one a PIL image)")
    if not isinstance(images, Iterable):
        raise TypeError(f"images: give a list of images (paths, bytes or PIL images), not {type(images).__name__}")
    if isinstance(images, Sequence):  # a generator is checked as it is read, not consumed here
        for i, im in enumerate(images):
            if not isinstance(im, _INPUT_TYPES):
                raise TypeError(f"images[{i}]: a path, bytes or a PIL image, not {type(im).__name__}"
                                + (" (a NumPy array: Image.fromarray(a) makes one a PIL image)"
                                   if type(im).__module__ == "numpy" else ""))


def _per_image(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, numbers.Real):  # also NumPy scalars (np.int64(3), np.float32(0.5))
        return [value.item() if isinstance(value, np.generic) else value] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: a number, or one per image, not {type(value).__name__}")
    values = [v.item() if isinstance(v, np.generic) else v for v in value]
    if len(values) != n:
        raise ValueError(f"{len(values)} values of {name} for {n} images: give one, or one per image")
    return values


def source_name(im: ImageInput, i: int) -> str:
    """How results name an input: its path, or `<image i>` for bytes and PIL images."""
    if isinstance(im, (str, os.PathLike)):
        return str(im)
    return f"<image {i}>"


PRETRAINED_PREFIX = "pretrained:"


def pretrained_model(backbone: str = "efficientnet_lite2", *, weights: str | None = None,
                     image_size: int | None = None, device: str = "auto", precision: str = "auto") -> Model:
    """A plain pretrained backbone as a Model with no classifier: `embed()` works, `predict()` does not."""
    from .backbones import create_backbone
    from .classifier import SkuModel

    dev = resolve_device(device)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a whole number of pixels >= 1, got {image_size!r}")
    check_precision(precision, dev)  # before the backbone is built
    bb = create_backbone(backbone, weights, image_size=image_size)
    card = ModelCard.for_backbone(backbone, bb.spec, embedding_dim=bb.num_features, coarse_head=False,
                                  train_config={"pretrained_only": True, "weights": weights})
    with warnings.catch_warnings():  # "Initializing zero-element tensors is a no-op": the head is empty on purpose
        warnings.simplefilter("ignore", UserWarning)
        net = SkuModel(bb, 0).to(dev).eval()
    net.to(memory_format=torch.channels_last)
    return Model(net, card, dev, precision)


def _exported_file(path: str | os.PathLike, name: str, fmt: str) -> Path:
    """`path` itself, or for a bundle folder its exported `name` (an error saying how to make it)."""
    p = Path(path)
    if p.name == "card.json":  # a bundle named by its card, as --model accepts
        p = p.parent
    if not p.is_dir():
        return p
    if not (p / name).is_file():
        raise BundleError(f"{p}: no {name}; run `skulens export --model {p} --format {fmt}` first")
    return p / name


def _check_embedded_card(p: Path, card: ModelCard, fmt: str) -> None:
    """Inside a bundle (a card.json beside the file) an exported file's embedded card must be the bundle's: a
    file exported from another model, or from this one before it changed, is refused rather than run."""
    import json

    from .bundle import CARD, read_card

    if (p.parent / CARD).is_file():
        bundle = json.loads(read_card(p.parent).to_json())
        differ = [k for k, v in json.loads(card.to_json()).items() if bundle.get(k) != v]
        if differ:
            raise BundleError(f"{p}: exported from another model than the bundle it sits in (its card differs from "
                              f"{p.parent / CARD} in {', '.join(differ[:5])}); export it again with "
                              f"`skulens export --model {p.parent} --format {fmt}`")


def load_onnx(path: str | os.PathLike, *, int8: bool = False, device: str = "cpu") -> Model:
    """A Model backed by ONNX Runtime: a .onnx file, or a bundle dir holding model.onnx (`int8`: its
    model.int8.onnx, written by `skulens export --int8` or `--preset fast`). `device` cuda (or auto) runs it
    through onnxruntime-gpu's CUDA provider where there is one. Inside a bundle its card must be the bundle's."""
    from .onnx_runtime import ONNX_INT8_NAME, ONNX_NAME, OnnxRunner, read_onnx

    p = _exported_file(path, ONNX_INT8_NAME if int8 else ONNX_NAME, "onnx --int8" if int8 else "onnx")
    card, quantized = read_onnx(p)
    if int8 and not quantized:  # a file named by hand: the int8 backend runs int8 graphs only
        raise BundleError(f"{p}: --backend onnx-int8 runs an int8 graph, and this one has no quantized node: use "
                          "--backend onnx, or name its int8 file (skulens export --int8 writes NAME.int8.onnx)")
    _check_embedded_card(p, card, "onnx" + (" --int8" if int8 else ""))
    model = Model(None, card, torch.device("cpu"), "off", runner=OnnxRunner(p, device=device))
    model.numerics = f"onnx runtime {'int8' if quantized else 'fp32'}"
    model.path = p.parent
    return model


def load_tflite(path: str | os.PathLike, *, int8: bool = False, threads: int | None = None) -> Model:
    """A Model backed by LiteRT (TensorFlow Lite): a .tflite file, or a bundle dir holding model.tflite (`int8`:
    its model.int8.tflite, written by `skulens export --format tflite --int8`).

    Inside a bundle (a card.json beside the file) the file's embedded card must be the bundle's: a file
    exported from another model, or from this one before it changed, is refused rather than run."""
    from .tflite_runtime import (
        TFLITE_INT8_NAME,
        TFLITE_NAME,
        TfliteRunner,
        read_tflite_card,
        tflite_is_quantized,
    )

    fmt = "tflite --int8" if int8 else "tflite"
    p = _exported_file(path, TFLITE_INT8_NAME if int8 else TFLITE_NAME, fmt)
    card = read_tflite_card(p)
    if int8 and not tflite_is_quantized(p):  # a file named by hand: the int8 backend runs int8 models only
        raise BundleError(f"{p}: --backend tflite-int8 runs an int8 model, and this one has no 8-bit tensor: use "
                          "--backend tflite, or name its int8 file (skulens export --format tflite --int8 writes "
                          "model.int8.tflite)")
    _check_embedded_card(p, card, fmt)
    model = Model(None, card, torch.device("cpu"), "off", runner=TfliteRunner(p, threads=threads, card=card))
    model.numerics = f"litert {'int8' if int8 or tflite_is_quantized(p) else 'fp32'}"
    model.path = p.parent
    return model


def load_model(bundle: str | os.PathLike, *, device: str = "auto", precision: str = "auto",
               backend: str = "torch") -> Model:
    """Load a model bundle (model.safetensors + card.json; never unpickles).

    backend "onnx" runs the bundle's exported `model.onnx` (see `skulens export`) with ONNX Runtime, "onnx-int8"
    its `model.int8.onnx` (`skulens export --int8` or `--preset fast`), "tflite" its `model.tflite` with LiteRT,
    "tflite-int8" its `model.int8.tflite` (`skulens export --format tflite --int8`). "pretrained:NAME" (e.g.
    "pretrained:efficientnet_lite2") is a plain pretrained backbone for embeddings only (see `pretrained_model`).
    """
    if str(bundle).startswith(PRETRAINED_PREFIX):
        if backend != "torch":  # no exported file to run: it was ignored
            raise ValueError(f"backend {backend!r}: a pretrained backbone runs in PyTorch only (backend 'torch')")
        return pretrained_model(str(bundle)[len(PRETRAINED_PREFIX):], device=device, precision=precision)
    check_precision_backend(precision, backend)  # it was ignored for an exported file
    if backend in ("onnx", "onnx-int8"):
        return load_onnx(bundle, int8=backend == "onnx-int8", device=device)
    if backend in ("tflite", "tflite-int8"):
        if not is_device_name(device):  # LiteRT's interpreter here runs on the CPU: said, not ignored
            raise DeviceError(f"unknown device {device!r}: auto, cpu, cuda or cuda:N")
        if str(device) not in ("auto", "cpu"):
            logger.warning("LiteRT runs on the CPU: device %s is not used", device)
        return load_tflite(bundle, int8=backend == "tflite-int8")
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}: {', '.join(MODEL_BACKENDS[:-1])} or {MODEL_BACKENDS[-1]}")
    dev = resolve_device(device)
    check_precision(precision, dev)  # before the weights are read
    net, card = load_bundle(bundle, dev)
    net.to(memory_format=torch.channels_last)
    model = Model(net, card, dev, precision)
    model.path = Path(bundle) if Path(bundle).is_dir() else Path(bundle).parent
    return model
