"""ONNX / TorchScript export and the ONNX Runtime backend, on the tiny trained bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import skulens
from skulens.deploy.onnx import export_onnx, export_torchscript, load_onnx, read_onnx_card
from skulens.models.bundle import BundleError, read_card

pytest.importorskip("onnxruntime")

# fp32 PyTorch vs ONNX Runtime on the same graph: differences are float reassociation only.
ATOL = 1e-4


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("export") / "bundle"
    shutil.copytree(tiny_bundle.bundle, b)
    return b


def _val_images(tiny_catalogue: Path) -> list[str]:
    return sorted(str(p) for p in (tiny_catalogue.parent / "val").rglob("*.jpg"))


def test_onnx_matches_pytorch(bundle: Path, tiny_catalogue: Path) -> None:
    path = export_onnx(bundle)
    assert path == bundle / "model.onnx" and path.stat().st_size > 1_000_000
    card = read_onnx_card(path)
    assert card == skulens.load(bundle).card  # labels + preprocessing travel inside the file
    images = _val_images(tiny_catalogue)
    ref = skulens.load(bundle, precision="off")  # fp32 reference
    onnx_model = skulens.load(bundle, backend="onnx")
    tensors, _, _ = ref._decode(images)
    a, b = ref.run(tensors, embeddings=True), onnx_model.run(tensors, embeddings=True)
    np.testing.assert_allclose(b.fine, a.fine, atol=ATOL)
    np.testing.assert_allclose(b.coarse_head, a.coarse_head, atol=ATOL)
    np.testing.assert_allclose(b.attributes, a.attributes, atol=ATOL)
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=ATOL)
    pa, pb = ref.predict(images), onnx_model.predict(images)
    assert [p.label for p in pa] == [p.label for p in pb]
    assert all(abs(x.confidence - y.confidence) < ATOL for x, y in zip(pa, pb, strict=True))


def test_onnx_backend_reports_bad_files_per_file(bundle: Path, tmp_path: Path, tiny_catalogue: Path) -> None:
    export_onnx(bundle)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    preds = load_onnx(bundle).predict([str(bad), _val_images(tiny_catalogue)[0]])
    assert preds[0].level == "error" and "not an image" in (preds[0].error or "")
    assert preds[1].level in ("fine", "coarse")


def test_torchscript_matches_pytorch(bundle: Path, tiny_catalogue: Path) -> None:
    path = export_torchscript(bundle)
    extra = {"card.json": ""}
    ts = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["card.json"])["classes"] == list(skulens.load(bundle).card.classes)
    ref = skulens.load(bundle, precision="off")
    tensors, _, _ = ref._decode(_val_images(tiny_catalogue)[:4])
    x = torch.stack([ref.transform(t) for t in tensors])
    with torch.no_grad():
        fine = ts(x)[0].numpy()
    np.testing.assert_allclose(fine, ref.run(tensors).fine, atol=ATOL)


def test_onnx_backend_without_export_is_a_clear_error(tiny_bundle, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle.bundle, b)
    with pytest.raises(BundleError, match="skulens export"):
        skulens.load(b, backend="onnx")


def test_cli_export_then_predict_with_onnx(bundle: Path, tiny_catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "export", str(bundle), "--format", "onnx",
                        "-o", str(out)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "exported onnx" in r.stderr
    images = _val_images(tiny_catalogue)[:3]
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", str(out), *images, "--backend", "onnx"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    expected = [p.fine_label for p in skulens.load(bundle, precision="off").predict(images)]
    assert [row["fine_label"] for row in rows] == expected
    # `info` reads the card embedded in the file (it said "not a bundle", while its hint offered .onnx files)
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "info", "-m", str(out), "--json"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and json.loads(r.stdout)["classes"] == list(read_card(bundle).classes), r.stderr
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "info", "-m", str(out)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "missing!" not in r.stdout and "MB" in r.stdout, r.stdout  # the file's own size
    # with no --data, the dataset the embedded card records (it fell back to grocery: "label(s) the model does
    # not know", or no data at all)
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "evaluate", "-m", str(out), "--backend", "onnx", "-o",
                        str(tmp_path / "ev"), "-q"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ev" / "report.json").is_file()


def test_int8_quantization_writes_a_quantized_graph(bundle: Path, tiny_catalogue: Path, tmp_path: Path) -> None:
    """Structure, metadata and valid outputs. Fidelity is measured on the real model (benchmarks/RESULTS.md:
    grocery val top-1 85.5 -> 83.8); this 4-epoch 64 px toy has margins too thin for int8 to keep, so it is
    quantized unchecked here (as the benchmark does): `skulens export --int8` would refuse it."""
    import onnx

    from skulens.deploy.quantize import calibration_sample, quantize_onnx_with_photos

    fp32 = export_onnx(bundle, tmp_path / "m.onnx")
    q = quantize_onnx_with_photos(fp32, calibration_sample(tiny_catalogue, images=24))
    assert q == tmp_path / "m.int8.onnx"
    assert q.is_file() and q.stat().st_size < 0.5 * fp32.stat().st_size
    assert read_onnx_card(q) == read_onnx_card(fp32)
    graph = onnx.load(str(q)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) > 50  # every conv / linear weight of Lite0 is stored as int8
    images = _val_images(tiny_catalogue)
    model = load_onnx(q)
    tensors, _, _ = model._decode(images)
    out = model.run(tensors, embeddings=True)
    assert out.fine.shape == (len(images), 3)
    np.testing.assert_allclose(out.fine.sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-3)


def test_int8_needs_onnx_format(bundle: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "export", str(bundle), "--format", "torchscript",
                        "--int8"], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "--int8 needs --format onnx" in r.stderr


def test_an_onnx_file_from_another_model_is_refused_inside_a_bundle(bundle: Path, tmp_path: Path) -> None:
    """model.onnx inside a bundle must carry the bundle's card (as model.tflite does): one exported before an
    enrolment or a retrain, or copied in from another run, is refused rather than run with stale classes.
    The bundle named by its card.json works too."""
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    export_onnx(copy, copy / "model.onnx")
    assert skulens.load(copy / "card.json", backend="onnx").classes == skulens.load(copy).classes
    card = json.loads((copy / "card.json").read_text(encoding="utf-8"))
    card["classes"] = [*card["classes"][:-1], "renamed-since"]
    (copy / "card.json").write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(BundleError, match="exported from another model"):
        skulens.load(copy, backend="onnx")


def test_the_onnx_export_is_checked_against_pytorch(bundle: Path, tmp_path: Path) -> None:
    """export_onnx runs the file it wrote under ONNX Runtime on a seeded batch and compares every output with
    PyTorch's. Compared against a network whose head differs, the check refuses."""
    from skulens.deploy.onnx import _exportable, check_onnx_matches

    path = export_onnx(bundle, tmp_path / "m.onnx")
    wrapper, card, _ = _exportable(bundle)
    check_onnx_matches(wrapper, path, card.input_size)  # the file as written: equal
    with torch.no_grad():
        wrapper.model.head.bias[0] += 5.0  # one class raised (a shift of every logit alike would not show)
    with pytest.raises(BundleError, match="differs from PyTorch"):
        check_onnx_matches(wrapper, path, card.input_size)
    assert not (tmp_path / "m.onnx.tmp").exists()


def test_an_onnx_file_with_a_damaged_card_is_a_bundle_error(bundle: Path, tmp_path: Path) -> None:
    """The card checks raise TypeError/ValueError: a bundle's card.json turned them into a BundleError, an
    export's embedded card did not (a traceback in `info`)."""
    import onnx

    from skulens.models.onnx_runtime import CARD_KEY

    proto = onnx.load(str(export_onnx(bundle, tmp_path / "m.onnx")))
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            card = json.loads(prop.value)
            card["input_size"] = None
            prop.value = json.dumps(card)
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(BundleError, match="invalid card"):
        read_onnx_card(tmp_path / "bad.onnx")
