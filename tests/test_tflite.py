"""TFLite / LiteRT: export round trips with parity, the card in the file's metadata, the tflite backend, errors.

Two kinds of test. The runtime ones (backend, metadata, corrupt and mismatched files) need only the small
runtime `ai-edge-litert` (skulens[tflite], in [dev]) and run on a LiteRT model built here with the flatbuffer
schema, no converter. The export ones need the converter (skulens[tflite-export]: litert-torch and
ai-edge-quantizer, not in [dev]) and skip without it, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import skulens
from conftest import modules_loaded_by
from skulens.deploy.parity import FP32_TOLERANCE, Parity, check_parity
from skulens.deploy.tflite import embed_card
from skulens.models.bundle import BundleError
from skulens.models.card import ModelCard
from skulens.models.predictor import load_tflite
from skulens.models.tflite_runtime import TfliteRunner, read_tflite_card

pytest.importorskip("ai_edge_litert", reason="the LiteRT runtime: pip install -e '.[tflite]' (in [dev])")

CLASSES = ("red-apple", "green-apple", "oat-milk")
SIZE = 32


def _has_converter() -> bool:
    try:
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


needs_converter = pytest.mark.skipif(
    not _has_converter(), reason="TFLite export needs the converter: pip install -e '.[tflite-export]' "
                                 "(litert-torch, ai-edge-quantizer; not in [dev], see pyproject.toml)")


# -------------------------------------------------------------------- a LiteRT model built without a converter


def _card(**changes) -> ModelCard:
    card = ModelCard(backbone="handmade", input_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     crop_pct=1.0, classes=CLASSES, embedding_dim=3, coarse_head=False)
    return replace(card, **changes)


WEIGHTS = np.array([[4.0, -2.0, -2.0], [-2.0, 4.0, -2.0], [-2.0, -2.0, 4.0]], dtype=np.float32)


def _handmade_tflite(card: ModelCard, n_classes: int = 3, *, int8: bool = False) -> bytes:
    """image (1x3xSxS) -> MEAN over H, W -> FULLY_CONNECTED -> SOFTMAX = fine; L2 norm of the mean = embedding.
    The head's signature, the exporter's names, and the card embedded by `embed_card`. int8: the image goes
    through QUANTIZE to an int8 tensor (scale 1/32) and DEQUANTIZE before the mean, as in a quantized export."""
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils as fb

    def buffer(a: np.ndarray | None = None):
        b = s.BufferT()
        b.data = None if a is None else np.frombuffer(a.tobytes(), dtype=np.uint8)
        return b

    def tensor(name: str, shape: list[int], buf: int = 0, dtype: int = s.TensorType.FLOAT32):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, dtype, buf
        return t

    def op(code: int, inputs: list[int], outputs: list[int], kind: int, options):
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs, o.builtinOptionsType, o.builtinOptions = code, inputs, outputs, kind, options
        return o

    weights = np.resize(WEIGHTS, (n_classes, 3)).astype(np.float32)
    m = s.ModelT()
    m.version = 3
    m.operatorCodes = []
    for code in (s.BuiltinOperator.MEAN, s.BuiltinOperator.FULLY_CONNECTED, s.BuiltinOperator.SOFTMAX,
                 s.BuiltinOperator.L2_NORMALIZATION):
        m.operatorCodes.append(s.OperatorCodeT(deprecatedBuiltinCode=code, builtinCode=code, version=1))
    m.buffers = [buffer(), buffer(np.array([2, 3], dtype=np.int32)), buffer(weights),
                 buffer(np.zeros(n_classes, dtype=np.float32))]
    g = s.SubGraphT()
    g.tensors = [tensor("image", [1, 3, SIZE, SIZE]), tensor("axes", [2], 1, s.TensorType.INT32),
                 tensor("pooled", [1, 3]), tensor("w", [n_classes, 3], 2), tensor("b", [n_classes], 3),
                 tensor("logits", [1, n_classes]), tensor("fine", [1, n_classes]), tensor("embedding", [1, 3])]
    reducer, fc, softmax = s.ReducerOptionsT(), s.FullyConnectedOptionsT(), s.SoftmaxOptionsT()
    reducer.keepDims, softmax.beta = False, 1.0
    g.operators = [op(0, [0, 1], [2], s.BuiltinOptions.ReducerOptions, reducer),
                   op(1, [2, 3, 4], [5], s.BuiltinOptions.FullyConnectedOptions, fc),
                   op(2, [5], [6], s.BuiltinOptions.SoftmaxOptions, softmax),
                   op(3, [2], [7], s.BuiltinOptions.L2NormOptions, s.L2NormOptionsT())]
    if int8:
        for code in (s.BuiltinOperator.QUANTIZE, s.BuiltinOperator.DEQUANTIZE):
            m.operatorCodes.append(s.OperatorCodeT(deprecatedBuiltinCode=code, builtinCode=code, version=1))
        q = tensor("image_int8", [1, 3, SIZE, SIZE], dtype=s.TensorType.INT8)
        q.quantization = s.QuantizationParametersT()
        q.quantization.scale, q.quantization.zeroPoint = [1 / 32], [0]
        g.tensors += [q, tensor("image_dequantized", [1, 3, SIZE, SIZE])]  # 8 and 9
        g.operators = [op(4, [0], [8], s.BuiltinOptions.QuantizeOptions, s.QuantizeOptionsT()),
                       op(5, [8], [9], s.BuiltinOptions.DequantizeOptions, s.DequantizeOptionsT()),
                       op(0, [9, 1], [2], s.BuiltinOptions.ReducerOptions, reducer), *g.operators[1:]]
    g.inputs, g.outputs = [0], [6, 7]
    m.subgraphs = [g]
    sig = s.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0
    sig.inputs = [s.TensorMapT()]
    sig.inputs[0].name, sig.inputs[0].tensorIndex = "image", 0
    sig.outputs = []
    for name, index in (("fine", 6), ("embedding", 7)):
        t = s.TensorMapT()
        t.name, t.tensorIndex = name, index
        sig.outputs.append(t)
    m.signatureDefs = [sig]
    return embed_card(bytes(fb.convert_object_to_bytearray(m)), card)


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pooled = x.mean(axis=(2, 3))
    logits = pooled @ WEIGHTS.T
    fine = np.exp(logits - logits.max(1, keepdims=True))
    return fine / fine.sum(1, keepdims=True), pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def _photo(path: Path, colour: tuple[int, int, int]) -> str:
    from PIL import Image

    rng = np.random.default_rng(sum(colour))
    arr = np.clip(np.array(colour) + rng.integers(-10, 11, size=(SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture()
def handmade(tmp_path: Path) -> Path:
    path = tmp_path / "hand.tflite"
    path.write_bytes(_handmade_tflite(_card()))
    return path


def test_the_card_travels_in_the_metadata_and_the_runner_matches_numpy(handmade: Path) -> None:
    assert read_tflite_card(handmade) == _card()
    runner = TfliteRunner(handmade, threads=1)
    x = np.random.default_rng(0).normal(size=(5, 3, SIZE, SIZE)).astype(np.float32)
    for batch in (x, x[:1], x[:3]):  # the batch-1 file runs any batch (the input is resized)
        out = runner.run_batch(batch)
        fine, emb = _reference(batch)
        np.testing.assert_allclose(out["fine"], fine, atol=1e-5)
        np.testing.assert_allclose(out["embedding"], emb, atol=1e-5)


def test_embedding_a_card_again_replaces_it(handmade: Path) -> None:
    again = embed_card(handmade.read_bytes(), _card(backbone="renamed"))
    out = handmade.with_name("again.tflite")
    out.write_bytes(again)
    assert read_tflite_card(out).backbone == "renamed"
    assert len(again) - len(handmade.read_bytes()) < 64  # one card, not two


def test_predict_through_the_tflite_backend(handmade: Path, tmp_path: Path) -> None:
    photos = [_photo(tmp_path / f"{i}.png", c) for i, c in enumerate([(250, 20, 20), (20, 250, 20), (20, 20, 250)])]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    model = skulens.load(handmade, backend="tflite")
    preds = model.predict(photos + [str(bad)])
    assert [p.fine_label for p in preds[:3]] == list(CLASSES)
    assert preds[3].level == "error"
    emb = model.embed(photos)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(handmade), *photos,
                        "--backend", "tflite"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["fine_label"] for line in r.stdout.splitlines()] == list(CLASSES)


def test_the_tflite_int8_backend_runs_the_bundles_int8_file_and_refuses_a_float_one(tmp_path: Path) -> None:
    from skulens.models.tflite_runtime import tflite_is_quantized

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "card.json").write_text(_card().to_json())
    photos = [_photo(tmp_path / f"{i}.png", c) for i, c in enumerate([(250, 20, 20), (20, 250, 20), (20, 20, 250)])]
    with pytest.raises(BundleError, match=r"no model\.int8\.tflite; run `skulens export .* --format tflite --int8`"):
        skulens.load(bundle, backend="tflite-int8")
    (bundle / "model.int8.tflite").write_bytes(_handmade_tflite(_card()))  # a float model under the int8 name
    assert not tflite_is_quantized(bundle / "model.int8.tflite")
    with pytest.raises(BundleError, match="tflite-int8 runs an int8 model, and this one has no 8-bit tensor"):
        skulens.load(bundle, backend="tflite-int8")
    (bundle / "model.int8.tflite").write_bytes(_handmade_tflite(_card(), int8=True))
    assert tflite_is_quantized(bundle / "model.int8.tflite")
    x = np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE)).astype(np.float32)
    out = TfliteRunner(bundle / "model.int8.tflite", threads=1).run_batch(x)
    fine, _ = _reference(np.clip(np.round(x * 32), -128, 127) / 32)  # the int8 rounding of the input, then float
    np.testing.assert_allclose(out["fine"], fine, atol=1e-5)
    assert np.abs(out["fine"] - _reference(x)[0]).max() > 1e-7  # and it did round
    assert [p.fine_label for p in skulens.load(bundle, backend="tflite-int8").predict(photos)] == list(CLASSES)
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(bundle), *photos,
                        "--backend", "tflite-int8"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["fine_label"] for line in r.stdout.splitlines()] == list(CLASSES)
    (bundle / "model.int8.tflite").unlink()
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(bundle), *photos,
                        "--backend", "tflite-int8"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "--format tflite --int8" in r.stderr and "Traceback" not in r.stderr


def test_a_corrupt_file_is_a_clear_error_naming_it(handmade: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(BundleError, match=r"junk\.tflite: not a TFLite model"):
        skulens.load(junk, backend="tflite")
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(handmade.read_bytes()[:200])  # identifier intact, the rest gone
    with pytest.raises(BundleError, match=r"cut\.tflite: .*corrupt"):
        skulens.load(cut, backend="tflite")
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(junk), str(junk),
                        "--backend", "tflite"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "junk.tflite: not a TFLite model" in r.stderr and "Traceback" not in r.stderr


def test_a_file_without_a_card_or_not_matching_its_card_is_refused(tmp_path: Path) -> None:
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils as fb

    obj = fb.read_model_from_bytearray(bytearray(_handmade_tflite(_card())))
    obj.metadata = []
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(bytes(fb.convert_object_to_bytearray(obj)))
    assert isinstance(obj, s.ModelT)
    with pytest.raises(BundleError, match=r"bare\.tflite: a TFLite file without a skulens card"):
        read_tflite_card(bare)
    wrong = tmp_path / "wrong.tflite"
    wrong.write_bytes(_handmade_tflite(_card(classes=("a", "b", "c", "d"))))  # the graph has 3 classes
    with pytest.raises(BundleError, match=r"wrong\.tflite: the graph does not match its card"):
        skulens.load(wrong, backend="tflite")


def test_another_bundles_file_in_a_bundle_is_refused(tiny_bundle, handmade: Path, tmp_path: Path) -> None:
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, b)
    with pytest.raises(BundleError, match="skulens export"):
        skulens.load(b, backend="tflite")  # nothing exported yet
    shutil.copy(handmade, b / "model.tflite")
    with pytest.raises(BundleError, match=r"bundle/model\.tflite: exported from another model"):
        skulens.load(b, backend="tflite")
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(b), str(handmade),
                        "--backend", "tflite"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "model.tflite: exported from another model" in r.stderr


def test_the_parity_rule() -> None:
    fine = Parity("m.tflite", 9, 1.0, FP32_TOLERANCE / 2)
    assert check_parity(fine, int8=False) is fine
    with pytest.raises(BundleError, match=r"m\.tflite: LiteRT disagrees with PyTorch"):
        check_parity(replace(fine, max_prob_diff=0.01), int8=False)
    with pytest.raises(BundleError, match=r"m\.tflite: .*int8 needs"):
        check_parity(replace(fine, top1_agreement=0.5, max_prob_diff=0.3), int8=True)
    assert check_parity(replace(fine, top1_agreement=0.95, max_prob_diff=0.2), int8=True)
    assert check_parity(replace(fine, top1_agreement=0.7, max_prob_diff=0.01), int8=True)  # near-ties only


def test_missing_packages_name_the_extra(monkeypatch) -> None:
    from skulens.deploy.tflite import require_tflite_export
    from skulens.models.tflite_runtime import require_tflite

    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(ImportError, match=r"skulens\[tflite-export\]"):
        require_tflite_export()
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r"skulens\[tflite\]"):
        require_tflite()


def test_help_imports_neither_torch_nor_litert() -> None:
    from skulens.cli.deploy import DEFAULT_RUNTIMES, OPTIONAL_RUNTIMES
    from skulens.deploy.bench import RUNTIMES

    assert DEFAULT_RUNTIMES + OPTIONAL_RUNTIMES == tuple(RUNTIMES)
    assert modules_loaded_by([[cmd, "--help"] for cmd in ("export", "predict", "bench")],
                             ("torch", "tensorflow", "ai_edge_litert", "litert_torch")) == []


# ------------------------------------------------------------------------------- export (needs the converter)


def _val_images(tiny_catalogue: Path) -> list[str]:
    return sorted(str(p) for p in (tiny_catalogue.parent / "val").rglob("*.jpg"))


@pytest.fixture(scope="module")
def exported(tiny_bundle, tiny_catalogue: Path, tmp_path_factory):
    """One fp32 + int8 export of the tiny bundle (the conversion takes ~20-60 s), through the checked recipe."""
    if not _has_converter():
        pytest.skip("TFLite export needs the converter: pip install -e '.[tflite-export]'")
    from skulens.deploy.quantize import calibration_sample
    from skulens.deploy.tflite import export_tflite_checked

    b = tmp_path_factory.mktemp("tflite") / "bundle"
    shutil.copytree(tiny_bundle.bundle, b)
    res = export_tflite_checked(b, parity_photos=_val_images(tiny_catalogue),
                                calibration_photos=calibration_sample(tiny_catalogue, images=24))
    return b, res


@needs_converter
def test_fp32_export_round_trips_with_parity(exported, tiny_catalogue: Path) -> None:
    b, res = exported
    assert res.path == b / "model.tflite" and res.path.stat().st_size > 1_000_000
    assert res.parity.top1_agreement == 1.0 and res.parity.max_prob_diff < 1e-4 and res.parity.images == 9
    ref = skulens.load(b, precision="off")
    assert read_tflite_card(res.path) == ref.card  # labels + preprocessing travel inside the file
    lite = skulens.load(b, backend="tflite")
    tensors, _, _ = ref._decode(_val_images(tiny_catalogue))
    a, o = ref.run(tensors, embeddings=True), lite.run(tensors, embeddings=True)
    for name in ("fine", "coarse_head", "attributes", "embeddings"):  # every head, tight: same graph in fp32
        np.testing.assert_allclose(getattr(o, name), getattr(a, name), atol=1e-4)


@needs_converter
def test_int8_export_round_trips_within_tolerance(exported, tiny_catalogue: Path) -> None:
    """int8 tolerance: at least 8 of the 9 top-1s and max |p diff| <= 0.15 (Lite2 on grocery val measured 0.13 on
    64 photos); the float tail keeps probabilities summing to 1 and embeddings unit length."""
    from ai_edge_litert.interpreter import Interpreter

    b, res = exported
    assert res.int8_path == b / "model.int8.tflite"
    assert res.int8_path.stat().st_size < 0.4 * res.path.stat().st_size
    assert read_tflite_card(res.int8_path) == read_tflite_card(res.path)
    assert res.int8_parity.top1_agreement >= 8 / 9 and res.int8_parity.max_prob_diff <= 0.15
    sig = Interpreter(str(res.int8_path)).get_signature_runner()
    assert sig.get_input_details()["image"]["dtype"] == np.float32  # float in and out, int8 inside
    assert {d["dtype"] for d in sig.get_output_details().values()} == {np.float32}
    model = load_tflite(res.int8_path)
    out = model.run(model._decode(_val_images(tiny_catalogue))[0], embeddings=True)
    np.testing.assert_allclose(out.fine.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-4)


@needs_converter
def test_cli_export_then_predict_with_tflite(exported, tiny_catalogue: Path, tmp_path: Path) -> None:
    b, _ = exported
    out = tmp_path / "m.tflite"
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "export", "-m", str(b), "--format", "tflite",
                        "-o", str(out), "--data", str(tiny_catalogue), "--parity-images", "6"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "exported tflite" in r.stderr and "top-1 agreement 100.0%" in r.stderr
    images = _val_images(tiny_catalogue)[:3]
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", "-m", str(b), *images, "--backend", "tflite"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    expected = [p.fine_label for p in skulens.load(b, precision="off").predict(images)]
    assert [json.loads(line)["fine_label"] for line in r.stdout.splitlines()] == expected


@needs_converter
def test_a_stale_export_is_refused_after_the_bundle_changes(exported, tmp_path: Path) -> None:
    b, _ = exported
    other = tmp_path / "bundle"
    shutil.copytree(b, other)
    card = json.loads((other / "card.json").read_text())
    card["classes"][0] = "renamed-product"
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match=r"model\.tflite: exported from another model .* in classes"):
        skulens.load(other, backend="tflite")


@needs_converter
def test_bench_rows_for_tflite(exported, tiny_catalogue: Path) -> None:
    from skulens.deploy.bench import Variant, run_bench

    b, res = exported
    paths = sorted(tiny_catalogue.parent.rglob("val/*/*.jpg"))
    variants = [Variant("base", "baseline", str(b)), Variant("fp32", "torch-fp32", str(b)),
                Variant("lite", "tflite-fp32", str(b), str(res.path)),
                Variant("lite8", "tflite-int8", str(b), str(res.int8_path))]
    out = run_bench(variants, [str(p) for p in paths], [p.parent.name for p in paths], threads=1, workers=1,
                    latency_images=2, isolate=False, progress=False)
    rows = {r.name: r for r in out.rows}
    assert rows["lite"].top1 == rows["fp32"].top1 and rows["lite"].size_mb == pytest.approx(
        res.path.stat().st_size / 1e6, abs=0.01)
    assert rows["lite8"].size_mb < 0.4 * rows["lite"].size_mb and rows["lite8"].throughput_ips > 0
    assert "LiteRT" in rows["lite"].description


def test_noise_images_stand_in_for_photos(tiny_bundle) -> None:
    from skulens.deploy.tflite import _noise_images

    imgs = _noise_images(tiny_bundle.bundle, 2)
    assert len(imgs) == 2 and imgs[0].dtype == torch.uint8 and not torch.equal(imgs[0], imgs[1])


@needs_converter
def test_cli_qat_int8_export_is_checked_against_the_fp32_bundle(tiny_bundle, tiny_catalogue: Path,
                                                               tmp_path: Path) -> None:
    """--qat: the int8 file comes from the quantization-aware fine-tuned weights, the fp32 file from the bundle's
    own; both are checked against the bundle, and no temporary file is left beside them."""
    out = tmp_path / "m.tflite"
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "export", "-m", str(tiny_bundle.bundle), "--format",
                        "tflite", "--int8", "--qat", "-o", str(out), "--data", str(tiny_catalogue),
                        "--calibration-images", "16", "--parity-images", "6", "-q"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "tuned" in r.stderr and "quantization-aware fine-tuned" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.tflite", "m.tflite"]
    ref = skulens.load(tiny_bundle.bundle, precision="off")
    tensors, _, _ = ref._decode(_val_images(tiny_catalogue))
    a = ref.run(tensors).fine
    np.testing.assert_allclose(load_tflite(out).run(tensors).fine, a, atol=1e-4)  # fp32: the bundle's weights
    q = load_tflite(tmp_path / "m.int8.tflite").run(tensors).fine
    assert (q.argmax(1) == a.argmax(1)).mean() >= 8 / 9 and np.abs(q - a).max() <= 0.15


@needs_converter
def test_bench_measures_a_tflite_int8_in_the_fast_folder(exported, tiny_catalogue: Path, tmp_path: Path) -> None:
    """`bench --fast DIR` measures DIR/model.int8.tflite beside DIR/model.int8.onnx when an export put it there."""
    from skulens.deploy.bench import bench_bundle
    from skulens.deploy.onnx import export_onnx
    from skulens.deploy.quantize import calibration_sample, quantize_onnx_with_photos

    b, res = exported
    fast = tmp_path / "fast"
    shutil.copytree(b, fast)
    quantize_onnx_with_photos(export_onnx(fast), calibration_sample(tiny_catalogue, images=8))
    bench = bench_bundle(b, tiny_catalogue, out=tmp_path / "bench", runtimes=("baseline",), fast=fast,
                         latency_images=2, isolate=False, threads=1, workers=1, progress=False)
    rows = {r.name: r for r in bench.rows}
    assert list(rows) == ["default (baseline)", "fast (onnx-int8)", "fast (tflite-int8)"]
    lite = load_tflite(fast / "model.int8.tflite")
    labels = [Path(p).parent.name for p in _val_images(tiny_catalogue)]
    expected = np.mean([p.fine_label == lab for p, lab in zip(lite.predict(_val_images(tiny_catalogue)), labels,
                                                              strict=True)])
    assert rows["fast (tflite-int8)"].top1 == pytest.approx(expected)
    assert rows["fast (tflite-int8)"].size_mb == pytest.approx(res.int8_path.stat().st_size / 1e6, abs=0.01)
