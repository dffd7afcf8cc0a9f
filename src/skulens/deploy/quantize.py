"""int8 static quantization with ONNX Runtime, calibrated on catalogue images.

QDQ format, per-channel int8 weights and uint8 activations (min/max calibration, or percentile with
`method="percentile"`): the combination ONNX Runtime recommends for CNNs on x86 CPUs. The card is copied
into the quantized file.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.catalogue import Catalogue
from ..models.card import ModelCard
from ..models.inference import iter_batches

__all__ = ["PARITY_IMAGES", "calibration_inputs", "calibration_sample", "check_sample", "quantize_dynamic_linear", "quantize_onnx",
           "quantize_onnx_with_photos"]


def calibration_sample(data: str | os.PathLike, *, split: str = "train", images: int = 256,
                       seed: int = 0, card: ModelCard | None = None) -> list[Path]:
    """The photos that calibrate int8: a seeded random `images` of the catalogue split (the CLI and the
    deployment benchmark use this one rule, so their int8 models are the same). With the model's `card`, a
    catalogue without a val split is split as its training run split it (see evaluate.heldout)."""
    return _seeded(_catalogue(data, card), split, images, seed)


def _catalogue(data: str | os.PathLike, card: ModelCard | None) -> Catalogue:
    from ..data.catalogue import load_catalogue
    from ..evaluate.heldout import card_catalogue

    return card_catalogue(data, card) if card is not None else load_catalogue(data)


def _seeded(cat: Catalogue, split: str, images: int, seed: int = 0) -> list[Path]:
    """A seeded random `images` of the split's photos (a CatalogueError naming the splits when it is absent)."""
    import random

    paths = [s.path for s in cat.split(split)]
    random.Random(seed).shuffle(paths)
    return paths[:images]


PARITY_IMAGES = 32  # held-out photos an int8 file is checked on: enough to catch a broken graph, a second or two


CHECK_SPLITS = ("val", "train", "test")  # where check photos come from, in turn


def check_sample(data: str | os.PathLike, calibration: Sequence[str | os.PathLike], *, card: ModelCard | None = None,
                 images: int = PARITY_IMAGES) -> list[Path]:
    """Up to `images` photos that are not in `calibration` (an int8 file is checked on photos that did not set its
    ranges): val's (the model's own split, see calibration_sample) first, then train's and test's when val has
    too few (`--calibration-split val` on a small catalogue took all of val, and the check was skipped). Empty
    only when the catalogue holds no other photo."""
    calibrated = {Path(p) for p in calibration}
    cat = _catalogue(data, card)  # once: each load walks and checks the catalogue
    found: list[Path] = []
    for split in (name for name in CHECK_SPLITS if name in cat.splits):
        pool = _seeded(cat, split, len(calibrated) + images)
        found += [p for p in pool if p not in calibrated and p not in found]
        if len(found) >= images:
            break
    return found[:images]


def quantize_onnx_with_photos(onnx_path: str | os.PathLike, photos: Sequence[str | os.PathLike],
                              out: str | os.PathLike | None = None, *,
                              check_photos: Sequence[str | os.PathLike] | None = None, progress: bool = False) -> Path:
    """int8 copy of an exported model (default NAME.int8.onnx beside it), calibrated on `photos`,
    decoded and preprocessed as the card embedded in the file says; written as OUT.tmp, then moved over OUT.

    `check_photos` (`skulens export --int8`: PARITY_IMAGES held-out photos, not the calibration ones whose
    ranges the file was fitted to; the deployment benchmark measures the file's accuracy itself): OUT is
    replaced only if the int8 file agrees with the fp32 one (itself within 1e-4 of PyTorch, checked at export)
    on them under the int8 rule LiteRT files are held to (`deploy.parity.check_parity`); otherwise
    BundleError, and OUT is left as it was."""
    from ..models.onnx_runtime import read_onnx_card

    onnx_path = Path(onnx_path)
    card = read_onnx_card(onnx_path)
    images, transform = calibration_inputs(photos, card, progress=progress)
    out = Path(out) if out else onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    tmp = out.with_name(out.name + ".tmp")
    try:
        quantize_onnx(onnx_path, tmp, images, transform, progress=progress)
        if check_photos:
            held_out, _ = calibration_inputs(check_photos, card)
            _check_int8(onnx_path, tmp, held_out, transform, name=out)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _check_int8(fp32: Path, int8: Path, images: Sequence[torch.Tensor],
                transform: Callable[[torch.Tensor], torch.Tensor], *, name: Path) -> None:
    from ..models.bundle import BundleError
    from ..models.onnx_runtime import OnnxRunner
    from .parity import Parity, check_parity

    a, b = OnnxRunner(fp32)(images, transform).fine, OnnxRunner(int8)(images, transform).fine
    parity = Parity(str(name), len(images), float(np.mean(a.argmax(1) == b.argmax(1))), float(np.abs(a - b).max()))
    try:
        check_parity(parity, int8=True, what="ONNX Runtime int8 disagrees with the fp32 model")
    except BundleError as e:
        raise type(e)(f"{e} (the file was not written)") from e  # a ParityError stays one


def calibration_inputs(photos: Sequence[str | os.PathLike], card: ModelCard, *, progress: bool = False
                       ) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """The calibration photos decoded (uint8 tensors) and the preprocessing an exported file's card says."""
    from ..data.dataset import decode_all
    from ..data.transforms import create_transform

    decoded = decode_all([Path(p) for p in photos], card.resize_to, desc="calibration", progress=progress)
    return decoded.images, create_transform(card)


def quantize_onnx(onnx_path: str | os.PathLike, out: str | os.PathLike, images: Sequence[torch.Tensor],
                  transform: Callable[[torch.Tensor], torch.Tensor], *, batch_size: int = 16,
                  per_channel: bool = True, keep_float: Sequence[str] = (), method: str = "minmax",
                  progress: bool = True) -> Path:
    """Quantize `onnx_path` to int8 using `images` (decoded uint8 tensors) for activation ranges.

    `keep_float`: names of more nodes (of the graph after ONNX Runtime's pre-processing, which keeps the
    exported names) to leave in float, beside the heads and post-processing (`deploy.fast` measures which).
    `method`: how activation ranges are set: "minmax" (the observed extremes, fast) or "percentile" (the
    99.99th percentile of a histogram: outliers clipped; slower to calibrate, kept by `--preset fast`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..models.onnx_runtime import CARD_KEY

    if not images:
        raise ValueError("int8 calibration needs at least one image")
    methods = {"minmax": (CalibrationMethod.MinMax, {}),
               "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.99})}
    if method not in methods:
        raise ValueError(f"calibration method {method!r}: minmax or percentile")
    calibrate, calib_options = methods[method]
    if method == "percentile" and len(images) % batch_size:
        # ONNX Runtime's histogram calibrators stack every batch's outputs into one array: a shorter last batch
        # makes it ragged (a ValueError deep in onnxruntime). Whole batches only (or one batch of them all).
        batch_size = min(batch_size, len(images))
        images = list(images)[: len(images) // batch_size * batch_size]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter_batches(images, transform, batch_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {"image": x.numpy().astype(np.float32)}

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference trips over the dynamic batch axis; ONNX shape inference suffices here.
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        # The backbone goes int8; the heads and the softmax/sigmoid/normalise tail stay float: quantized,
        # the probabilities were rounded to 1/255 steps (seen here: rows summing to 254/255, ties).
        # Quantizing only Conv/Gemm instead cost 16 points (conv outputs quantized before ReLU6).
        graph = onnx.load(str(pre))
        missing = sorted(set(keep_float) - {n.name for n in graph.graph.node})
        if missing:
            raise ValueError(f"{onnx_path}: no node named {', '.join(missing[:3])} to keep float")
        # the histogram calibrators print their progress: to stderr, where skulens' messages go (nowhere with -q)
        with contextlib.ExitStack() as stack:
            sink = sys.stderr if progress else stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(_without_root_info())
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            nodes_to_exclude=[*_tail_nodes(graph), *keep_float], calibrate_method=calibrate,
                            extra_options=calib_options)
    source = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    proto = onnx.load(str(out))
    if CARD_KEY in source and CARD_KEY not in {p.key for p in proto.metadata_props}:
        entry = proto.metadata_props.add()
        entry.key, entry.value = CARD_KEY, source[CARD_KEY]
        onnx.save(proto, str(out))
    return out


@contextlib.contextmanager
def _without_root_info() -> Iterator[None]:
    """ONNX Runtime's quantizer logs through the root logger at INFO, a line per tensor ("Increased scale[...]":
    ~140 for a Lite0): dropped while it runs, unless debug logging (-v) is on. skulens' own loggers are named."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.name != "root" or record.levelno >= logging.WARNING

    root = logging.getLogger()
    if root.isEnabledFor(logging.DEBUG):
        yield
        return
    drop, handlers = _Drop(), list(root.handlers)
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)


_POOLS = frozenset({"GlobalAveragePool", "ReduceMean", "AveragePool", "Flatten"})


def _tail_nodes(model) -> list[str]:
    """Names of the nodes after the backbone's global pooling: heads and post-processing."""
    producer = {out: node for node in model.graph.node for out in node.output}
    tail: dict[str, object] = {}
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in tail:
            continue
        tail[node.name] = node
        if node.op_type in _POOLS:
            continue  # the pooling itself stays quantizable: everything before it is the backbone
        stack.extend(node.input)
    return [name for name, node in tail.items() if node.op_type not in _POOLS]


def quantize_dynamic_linear(net: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """PyTorch dynamic int8 quantization of the Linear layers (weights int8, activations quantized per batch).

    For EfficientNet this is only the heads: dynamic quantization has no convolution kernels, and the
    convolutions are nearly all the compute, so expect no speed-up on a conv net (the deployment
    benchmark measures it); static int8 of the convolutions is `quantize_onnx`. Returns the quantized
    copy and the bytes its int8 weights save over fp32.
    """
    import copy
    import warnings

    linear = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(net), {torch.nn.Linear}, dtype=torch.qint8)
    return q, 3 * linear
