"""TensorFlow Lite (LiteRT) export of a bundle, int8 quantization, and the parity check against PyTorch.

litert-torch converts the same `head_probabilities` graph the ONNX export traces straight from PyTorch (no ONNX
or TensorFlow in between), at batch 1 with the input NCHW as in PyTorch: input `image`, outputs `fine`, optional
`coarse` and `attributes`, and `embedding`. The card travels inside the file, as the `skulens_card` entry of
the model's metadata table, so the file alone is enough to preprocess and decode labels.

int8 is ai-edge-quantizer's static full-integer recipe (int8 weights per channel, int8 activations, min/max
calibrated on photos) over the fp32 file; as in the ONNX int8, the heads and the softmax/sigmoid/normalise
tail after the global pooling stay float, so probabilities are not rounded to 1/256 steps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.bundle import BundleError
from ..models.card import ModelCard
from ..models.onnx_runtime import CARD_KEY
from ..models.predictor import load_model, load_tflite
from ..models.tflite_runtime import TFLITE_INT8_NAME, TFLITE_NAME, read_tflite_card, require_tflite
from .onnx import _exportable
from .parity import Parity, check_parity

__all__ = ["TfliteExport", "embed_card",
           "export_tflite", "export_tflite_checked", "int8_name", "quantize_tflite", "quantize_tflite_with_photos",
           "require_tflite_export", "tflite_parity"]



def require_tflite_export() -> None:
    require_tflite()
    try:
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as e:
        raise ImportError("TFLite export needs the converter: pip install 'skulens[tflite-export]' "
                          "(litert-torch and ai-edge-quantizer)") from e


class _Named(nn.Module):
    """The exported graph with named outputs: they become the signature's output names."""

    def __init__(self, wrapper: nn.Module):
        super().__init__()
        self.wrapper = wrapper

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.wrapper.names, self.wrapper(image), strict=True))


@contextmanager
def _converter_progress(show: bool) -> Iterator[None]:
    """litert-torch prints a line per conversion step and ai-edge-quantizer draws tqdm bars unless their
    switches (environment variables) are off, and both log every lowering to the root logger at INFO: quiet
    for the conversion only, then put back. The quantizer's calibration also warns that it keeps every tensor,
    which is what calibration is."""
    import logging
    import warnings

    switches = {"LITERT_TORCH_SHOW_PROGRESS": "y" if show else "n", "TQDM_DISABLE": "0" if show else "1"}
    before = {k: os.environ.get(k) for k in switches}
    os.environ.update(switches)
    root = logging.getLogger()
    level = root.level
    if not show:
        root.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            yield
    finally:
        root.setLevel(level)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def export_tflite(bundle: str | os.PathLike, out: str | os.PathLike | None = None, *,
                  progress: bool = False) -> Path:
    """Convert `bundle` to a fp32 .tflite (default: BUNDLE/model.tflite) with the card in its metadata."""
    require_tflite_export()
    import litert_torch

    wrapper, card, _ = _exportable(bundle)
    x = torch.zeros(1, 3, card.input_size, card.input_size)  # batch 1: the runner resizes for batches
    with _converter_progress(progress), torch.no_grad():
        edge = litert_torch.convert(_Named(wrapper).eval(), sample_kwargs={"image": x})
        model = edge.model_content()
    path = Path(out) if out else Path(bundle) / TFLITE_NAME
    _write(path, embed_card(model, card))
    return path


def embed_card(model: bytes, card: ModelCard) -> bytes:
    """`model` (a .tflite's bytes) with `card` as its `skulens_card` metadata entry (replacing one there)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    obj = fb.read_model_from_bytearray(bytearray(model))
    obj.metadata = obj.metadata or []
    entry = next((m for m in obj.metadata if m.name in (CARD_KEY, CARD_KEY.encode())), None)
    if entry is None:
        entry = schema.MetadataT()
        entry.name, entry.buffer = CARD_KEY, len(obj.buffers)
        obj.metadata.append(entry)
        obj.buffers.append(schema.BufferT())
    obj.buffers[entry.buffer].data = np.frombuffer(card.to_json().encode("utf-8"), dtype=np.uint8)
    return bytes(fb.convert_object_to_bytearray(obj))


def _write(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def quantize_tflite_with_photos(tflite_path: str | os.PathLike, photos: Sequence[str | os.PathLike],
                                out: str | os.PathLike | None = None, *, progress: bool = False) -> Path:
    """int8 copy of an exported .tflite (default model.int8.tflite beside it), calibrated on `photos`,
    decoded and preprocessed as the card embedded in the file says."""
    from .quantize import calibration_inputs

    tflite_path = Path(tflite_path)
    images, transform = calibration_inputs(photos, read_tflite_card(tflite_path), progress=progress)
    out = int8_name(tflite_path) if out is None else out
    return quantize_tflite(tflite_path, out, images, transform, progress=progress)


def quantize_tflite(tflite_path: str | os.PathLike, out: str | os.PathLike, images: Sequence[torch.Tensor],
                    transform: Callable[[torch.Tensor], torch.Tensor], *, progress: bool = False) -> Path:
    """Static int8 of `tflite_path` with `images` (decoded uint8 tensors) for the activation ranges."""
    require_tflite_export()
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    if not images:
        raise ValueError("int8 calibration needs at least one image")
    tflite_path = Path(tflite_path)
    card = read_tflite_card(tflite_path)
    qt = quantizer.Quantizer(str(tflite_path), recipe.static_wi8_ai8())
    keep_float = algorithm_manager.AlgorithmName.NO_QUANTIZE
    tail = _tail_scopes(tflite_path.read_bytes())
    if tail:
        qt.update_quantization_recipe("^(" + "|".join(re.escape(s) for s in tail) + ")$",
                                      qtyping.TFLOperationName.ALL_SUPPORTED, algorithm_key=keep_float)
    # The model's input and outputs stay float (a QUANTIZE op at the start): the same preprocessing feeds
    # both files, and the probabilities come out unrounded.
    for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        qt.update_quantization_recipe(".*", io, algorithm_key=keep_float)
    samples = [{"image": transform(im).unsqueeze(0).numpy().astype(np.float32)} for im in images]
    with _converter_progress(progress):
        calibration = qt.calibrate({"serving_default": samples})
        safe = _bias_safe_weights(tflite_path.read_bytes(), calibration)
        if safe is not None:  # same graph, same tensor names: the calibration still holds
            qt = quantizer.Quantizer(safe, qt.get_quantization_recipe())
        result = qt.quantize(calibration, enable_progress_report=False)
    out = Path(out)
    _write(out, embed_card(bytes(result.quantized_model), card))
    return out


def _bias_safe_weights(model: bytes, calibration: dict) -> bytes | None:
    """`model` with its dead channels made quantizable, or None if it has none.

    The quantizer stores a bias in int32 at scale input_scale x weight_scale; a channel whose weights are all
    ~0 (EfficientNet-Lite's pretrained weights have such dead channels) gets a weight scale of ~1e-11, and its
    bias overflows int32: saturated, then wrapped to the other sign by the cast, so the channel's constant
    output (relu6(bias)) is lost. Here such a channel gets one weight just large enough for its bias to fit
    (a change ~1e-5, far below int8 rounding). On the grocery Lite2: 172 channels in 36 layers."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    obj = fb.read_model_from_bytearray(bytearray(model))
    graph = obj.subgraphs[0]
    ops = schema.BuiltinOperator
    channel_axis = {ops.CONV_2D: 0, ops.DEPTHWISE_CONV_2D: 3, ops.FULLY_CONNECTED: 0}  # OHWI, 1HWC, OI
    changed = False
    for op in graph.operators:
        axis = channel_axis.get(fb.get_builtin_code_from_operator_code(obj.operatorCodes[op.opcodeIndex]))
        if axis is None or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (graph.tensors[int(i)] for i in op.inputs[:3])
        stats = calibration.get(x.name.decode() if isinstance(x.name, bytes) else x.name)
        wbuf, bbuf = obj.buffers[w.buffer], obj.buffers[b.buffer]
        if not stats or wbuf.data is None or bbuf.data is None or w.type != schema.TensorType.FLOAT32:
            continue
        input_scale = (max(float(np.max(stats["max"])), 0.0) - min(float(np.min(stats["min"])), 0.0)) / 255
        weights = np.frombuffer(bytes(wbuf.data), dtype=np.float32).reshape(w.shape).copy()
        bias = np.frombuffer(bytes(bbuf.data), dtype=np.float32)
        # int8 weights: scale = max|w| / 127; keep |bias| / (input_scale * scale) below 2^30 (a 2x margin)
        need = 127 * np.abs(bias) / (2.0**30 * max(input_scale, 1e-12))
        per_channel = np.abs(np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1)).max(1)
        for c in np.flatnonzero(per_channel < need):
            index = [0] * weights.ndim
            index[axis] = int(c)
            weights[tuple(index)] = need[c]
            changed = True
        wbuf.data = np.frombuffer(weights.tobytes(), dtype=np.uint8)
    return bytes(fb.convert_object_to_bytearray(obj)) if changed else None


def _tail_scopes(model: bytes) -> list[str]:
    """Scopes (ai-edge-quantizer's op names) of the ops after the backbone's global pooling (MEAN):
    the heads and the post-processing, found by walking back from the outputs."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as qfb

    obj = fb.read_model_from_bytearray(bytearray(model))
    graph = obj.subgraphs[0]
    codes = [fb.get_builtin_code_from_operator_code(c) for c in obj.operatorCodes]
    producer = {int(t): i for i, op in enumerate(graph.operators) for t in op.outputs}
    seen: set[int] = set()
    stack = [int(t) for t in graph.outputs]
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in seen:
            continue
        op = graph.operators[i]
        if codes[op.opcodeIndex] in (schema.BuiltinOperator.MEAN, schema.BuiltinOperator.AVERAGE_POOL_2D):
            continue  # the global pooling itself stays quantized: everything before it is the backbone
        seen.add(i)
        stack.extend(int(t) for t in op.inputs if t >= 0)
    return [qfb.get_op_scope(graph.operators[i], graph.tensors) for i in sorted(seen)]


# ------------------------------------------------------------------------------------------------ parity


def tflite_parity(bundle: str | os.PathLike, tflite_file: str | os.PathLike,
                  photos: Sequence[str | os.PathLike | torch.Tensor]) -> Parity:
    """Compare `tflite_file` with the bundle under PyTorch fp32 on `photos` (paths, or decoded uint8 CHW
    tensors; random noise when there are no photos to hand is the caller's choice)."""
    ref = load_model(bundle, device="cpu", precision="off")
    lite = load_tflite(tflite_file)
    paths = [p for p in photos if not isinstance(p, torch.Tensor)]
    tensors = [p for p in photos if isinstance(p, torch.Tensor)]
    if paths:
        decoded, _, failed = ref._decode(paths)
        if failed:
            raise BundleError(f"parity photo {paths[failed[0][0]]}: {failed[0][1]}")
        tensors += decoded
    if not tensors:
        raise ValueError("the parity check needs at least one photo")
    a, b = ref.run(tensors).fine, lite.run(tensors).fine
    return Parity(str(tflite_file), len(tensors), float((a.argmax(1) == b.argmax(1)).mean()),
                  float(np.abs(a - b).max()))


# ------------------------------------------------------------------------------------------------ the recipe


@dataclass(frozen=True)
class TfliteExport:
    path: Path
    parity: Parity
    int8_path: Path | None = None
    int8_parity: Parity | None = None
    qat: Any = None  # deploy.qat.QatResult when the int8 file comes from quantization-aware fine-tuned weights


def int8_name(path: Path) -> Path:
    """Where the int8 copy of an exported .tflite goes: model.int8.tflite beside model.tflite, NAME.int8.tflite."""
    return path.with_name(TFLITE_INT8_NAME if path.name == TFLITE_NAME else path.stem + ".int8.tflite")


def export_tflite_checked(bundle: str | os.PathLike, out: str | os.PathLike | None = None, *,
                          parity_photos: Sequence[str | os.PathLike] = (),
                          calibration_photos: Sequence[str | os.PathLike] | None = None,
                          qat_samples: Sequence[Any] | None = None,
                          progress: bool = False, say: Callable[[str], None] | None = None) -> TfliteExport:
    """`skulens export --format tflite [--int8 [--qat]]`: the fp32 file, then (given calibration photos) its int8
    copy, each checked against PyTorch on `parity_photos` (held-out photos; none: 8 seeded noise images, which
    prove the graph and not the accuracy). Each is written beside its path as .tmp and moved over the path only
    once it passed: a file that fails is deleted, the one it would have replaced kept, and BundleError raised.

    qat_samples (catalogue Samples, usually train): the int8 file is made from `bundle` fine-tuned through the
    int8 rounding on them (`deploy.qat`), after the fp32 file passed its check; it is still checked against
    `bundle` in PyTorch fp32."""
    import tempfile

    photos: Sequence[str | os.PathLike | torch.Tensor] = list(parity_photos) or _noise_images(bundle)
    path = Path(out) if out else Path(bundle) / TFLITE_NAME
    parity = _checked(bundle, export_tflite(bundle, _tmp(path), progress=progress), path, photos, int8=False)
    if calibration_photos is None:
        return TfliteExport(path, parity)
    q = int8_name(path)
    if qat_samples is None:
        made = quantize_tflite_with_photos(path, calibration_photos, _tmp(q), progress=progress)
        return TfliteExport(path, parity, q, _checked(bundle, made, q, photos, int8=True))
    from .qat import qat_bundle

    with tempfile.TemporaryDirectory(prefix="skulens-qat-") as tmp:
        if say:
            say(f"quantization-aware fine-tune on {len(qat_samples)} photos (about a minute per 1000 on 2 CPU cores)")
        tuned = qat_bundle(bundle, Path(tmp) / "bundle", qat_samples, progress=progress)
        if say:
            say(f"tuned {tuned.convolutions} convolutions through int8 rounding in {tuned.steps} steps "
                f"({tuned.seconds / 60:.1f} min)")
        grid = export_tflite(tuned.out, Path(tmp) / TFLITE_NAME, progress=progress)
        made = quantize_tflite_with_photos(grid, calibration_photos, _tmp(q), progress=progress)
    return TfliteExport(path, parity, q, _checked(bundle, made, q, photos, int8=True), tuned)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _checked(bundle: str | os.PathLike, made: Path, path: Path, photos: Sequence[str | os.PathLike | torch.Tensor],
             *, int8: bool) -> Parity:
    """Check `made` against PyTorch, then move it over `path`; `made` never outlives the call."""
    try:
        parity = check_parity(replace(tflite_parity(bundle, made, photos), file=str(path)), int8=int8)
        os.replace(made, path)
    except BundleError as e:
        raise type(e)(f"{e} (the file was not written)") from e  # a ParityError stays one
    finally:
        made.unlink(missing_ok=True)
    return parity


def _noise_images(bundle: str | os.PathLike, n: int = 8) -> list[torch.Tensor]:
    from ..models.bundle import read_card

    size = read_card(bundle).resize_to
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]
