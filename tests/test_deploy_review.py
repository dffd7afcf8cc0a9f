"""Review fixes in deployment: every export and bench path takes its val photos from the training run's split,
--model may name card.json (one rule, models.bundle.bundle_folder), the int8 ONNX file is checked against fp32
before it replaces anything, and a LiteRT file replaces the old one only after its parity check."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import write_folder_catalogue
from skulens.cli import main
from skulens.data.catalogue import load_catalogue
from skulens.deploy.parity import ParityError
from skulens.evaluate.heldout import card_catalogue
from skulens.models.bundle import read_card

pytest.importorskip("onnxruntime")


class _Stop(Exception):
    """Raised by a spy once it has seen what it came for."""


@pytest.fixture(scope="module")
def folder_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<class>/*.jpg: no val split of its own, so one is carved out of train."""
    return write_folder_catalogue(tmp_path_factory.mktemp("folders"), seed=3)


@pytest.fixture(scope="module")
def seeded_bundle(tiny_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle as if trained with --seed 3 --val-fraction 0.5."""
    bundle = tmp_path_factory.mktemp("seed3") / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    card = json.loads((bundle / "card.json").read_text())
    card["train_config"].update(seed=3, val_fraction=0.5)
    (bundle / "card.json").write_text(json.dumps(card))
    return bundle


@pytest.fixture(scope="module")
def card_val(seeded_bundle: Path, folder_catalogue: Path) -> set[Path]:
    """The photos the seeded bundle never trained on; the defaults' "val" differs (and is a third of the size)."""
    val = {s.path for s in card_catalogue(folder_catalogue, read_card(seeded_bundle)).split("val")}
    assert val != {s.path for s in load_catalogue(folder_catalogue).split("val")}
    return val


# ---------------------------------------------------------------- 1: the training run's val split everywhere


def test_cli_onnx_int8_calibrates_on_the_cards_split(seeded_bundle: Path, folder_catalogue: Path, card_val: set[Path],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.deploy import onnx, quantize

    def fake_export(bundle: Any, out: Any) -> Path:
        Path(out).write_bytes(b"onnx")
        return Path(out)

    def spy(path: Any, photos: list[Path], *a: Any, **kw: Any) -> Path:
        raise _Stop(photos)

    monkeypatch.setattr(onnx, "export_onnx", fake_export)
    monkeypatch.setattr(quantize, "quantize_onnx_with_photos", spy)
    with pytest.raises(_Stop) as seen:
        main(["export", "--model", str(seeded_bundle), "--int8", "--data", str(folder_catalogue), "--calibration-split",
              "val", "--calibration-images", "100", "-o", str(tmp_path / "m.onnx"), "-q"])
    assert set(seen.value.args[0]) == card_val


def test_cli_tflite_parity_calibration_and_qat_use_the_cards_split(
        seeded_bundle: Path, folder_catalogue: Path, card_val: set[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.deploy import tflite

    def spy(bundle: Any, out: Any, **kw: Any) -> None:
        raise _Stop(kw)

    monkeypatch.setattr(tflite, "require_tflite_export", lambda: None)  # the converter is not needed to get here
    monkeypatch.setattr(tflite, "export_tflite_checked", spy)
    with pytest.raises(_Stop) as seen:
        main(["export", "--model", str(seeded_bundle), "--format", "tflite", "--int8", "--qat", "--data",
              str(folder_catalogue), "--calibration-split", "val", "--calibration-images", "100", "--parity-images",
              "100", "-q"])
    kw = seen.value.args[0]
    assert set(kw["parity_photos"]) == set(kw["calibration_photos"]) == card_val
    assert {s.path for s in kw["qat_samples"]} == card_val


def test_cli_bench_detection_photos_come_from_the_cards_split(
        seeded_bundle: Path, folder_catalogue: Path, card_val: set[Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.deploy import bench

    det = tmp_path / "det"
    det.mkdir()
    (det / "detector.json").write_text("{}")

    def spy(paths: list[str], n: int) -> None:
        raise _Stop(paths)

    monkeypatch.setattr(bench, "bench_bundle", lambda *a, **kw: None)  # the measurements are not the point here
    monkeypatch.setattr(bench, "to_markdown", lambda result: "")
    monkeypatch.setattr(bench, "one_megapixel_jpegs", spy)
    with pytest.raises(_Stop) as seen:
        main(["bench", "--model", str(seeded_bundle), "--data", str(folder_catalogue), "--split", "val",
              "--detector", str(det), "--out", str(tmp_path / "bench"), "-q"])
    assert {Path(p) for p in seen.value.args[0]} == card_val


def test_make_fast_checks_and_calibrates_on_the_cards_split(
        seeded_bundle: Path, folder_catalogue: Path, card_val: set[Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.data import dataset
    from skulens.deploy import quantize
    from skulens.deploy.fast import make_fast

    decoded: list[list[Path]] = []
    real_decode = dataset.decode_all

    def decode_spy(paths: list[Path], *a: Any, **kw: Any) -> Any:
        decoded.append([Path(p) for p in paths])
        return real_decode(paths, *a, **kw)

    def calibration_spy(photos: list[Path], *a: Any, **kw: Any) -> None:
        raise _Stop(photos)

    monkeypatch.setattr(dataset, "decode_all", decode_spy)
    monkeypatch.setattr(quantize, "calibration_inputs", calibration_spy)
    with pytest.raises(_Stop) as seen:  # stopped before the int8 candidates: the split is all this test is about
        make_fast(seeded_bundle, out=tmp_path / "fast", data=folder_catalogue, distil=False, calibration_split="val",
                  calibration_images=100, progress=False, say=lambda m: None)
    assert set(decoded[0]) == card_val  # the check photos
    assert set(seen.value.args[0]) == card_val  # the calibration photos


# ---------------------------------------------------------------- 2: --model may name card.json, one rule


def test_export_model_may_name_the_folder_or_its_card(tiny_bundle, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.deploy import fast, onnx

    def spy(bundle: Any, *a: Any, **kw: Any) -> None:
        raise _Stop(bundle)

    monkeypatch.setattr(onnx, "export_onnx", spy)
    monkeypatch.setattr(fast, "make_fast", spy)
    folder = Path(tiny_bundle.bundle)
    for model in (folder, folder / "card.json"):
        for extra in ([], ["--preset", "fast", "--out", str(tmp_path / "fast")]):
            with pytest.raises(_Stop) as seen:
                main(["export", "--model", str(model), *extra, "-q"])
            assert Path(seen.value.args[0]) == folder, (model, extra)
    exported = tmp_path / "m.onnx"
    exported.write_bytes(b"onnx")
    assert main(["export", "--model", str(exported), "--preset", "fast", "--out", str(tmp_path / "f2")]) == 2


# ---------------------------------------------------------------- 3: the int8 ONNX file is checked against fp32


@pytest.fixture(scope="module")
def onnx_files(tiny_bundle, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny bundle's fp32 ONNX file, and one of the same network with its fine head's rows rolled (every
    top-1 moved): what a broken int8 file looks like to the check."""
    import torch
    from safetensors.torch import load_file, save_file

    from skulens.deploy.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    other = root / "other"
    shutil.copytree(tiny_bundle.bundle, other)
    weights = load_file(other / "model.safetensors")
    for name in ("head.weight", "head.bias"):
        weights[name] = torch.roll(weights[name], 1, dims=0).contiguous()
    save_file(weights, other / "model.safetensors")
    return export_onnx(tiny_bundle.bundle, root / "m.onnx"), export_onnx(other, root / "other.onnx")


def _quantize_as(monkeypatch: pytest.MonkeyPatch, made: Path) -> None:
    """quantize_onnx writes `made` (the fp32 file itself: a perfect int8; the rolled one: a broken int8)."""
    from skulens.deploy import quantize

    def fake(onnx_path: Any, out: Any, *a: Any, **kw: Any) -> Path:
        shutil.copyfile(made, out)
        return Path(out)

    monkeypatch.setattr(quantize, "quantize_onnx", fake)


def test_an_int8_onnx_file_that_disagrees_with_fp32_is_not_written(
        onnx_files: tuple[Path, Path], tiny_catalogue: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.deploy.quantize import calibration_sample, quantize_onnx_with_photos

    fp32, broken = onnx_files
    photos = calibration_sample(tiny_catalogue, images=8)
    out = tmp_path / "m.int8.onnx"
    out.write_bytes(b"the earlier file")
    _quantize_as(monkeypatch, broken)
    with pytest.raises(ParityError, match=r"m\.int8\.onnx: ONNX Runtime int8 disagrees with the fp32 model: top-1 "
                                          r"agreement 0\.0% .*int8 needs >= 90% .*not written"):
        quantize_onnx_with_photos(fp32, photos, out, check_photos=photos)
    assert out.read_bytes() == b"the earlier file" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    _quantize_as(monkeypatch, fp32)
    assert quantize_onnx_with_photos(fp32, photos, out, check_photos=photos) == out
    assert out.read_bytes() == fp32.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_cli_int8_onnx_is_written_only_when_it_agrees(
        tiny_bundle, onnx_files: tuple[Path, Path], tiny_catalogue: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["export", "--model", str(tiny_bundle.bundle), "--int8", "--data", str(tiny_catalogue),
            "--calibration-images", "8", "-o", str(tmp_path / "m.onnx"), "-q"]
    _quantize_as(monkeypatch, onnx_files[1])
    # a run that failed its own check (exit 1), not an input error (2)
    assert main(argv) == 1 and "ONNX Runtime int8 disagrees with the fp32 model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no m.int8.onnx, no .tmp
    _quantize_as(monkeypatch, onnx_files[0])
    assert main(argv) == 0 and "checked against fp32 on 25 photos outside" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.onnx"]
    # calibrated on val: checked on the val photos that did not set its ranges, then on train's; with all of val
    # calibrating it, the file was written unchecked ("NOT checked against fp32", exit 0)
    on_val = [*argv, "--calibration-split", "val"]
    on_val[on_val.index("--calibration-images") + 1] = "6"
    assert main(on_val) == 0 and "checked against fp32 on 27 photos outside" in capsys.readouterr().err
    on_val[on_val.index("--calibration-images") + 1] = "9"
    assert main(on_val) == 0 and "checked against fp32 on 24 photos outside" in capsys.readouterr().err


def test_int8_check_photos_never_overlap_the_calibration_and_none_left_is_refused(
        tiny_bundle, tiny_catalogue: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skulens.deploy.quantize import calibration_sample, check_sample
    from skulens.models.bundle import read_card

    card = read_card(tiny_bundle.bundle)
    every = [p for split in ("train", "val") for p in calibration_sample(tiny_catalogue, split=split, images=999,
                                                                           card=card)]
    assert check_sample(tiny_catalogue, every, card=card) == []
    some = every[:30]
    check = check_sample(tiny_catalogue, some, card=card)
    assert len(check) == 3 and not set(check) & set(some)


# ---------------------------------------------------------------- 4: a LiteRT file replaces the old one once checked


def test_a_tflite_export_replaces_the_old_file_only_after_its_parity_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.deploy import tflite
    from skulens.deploy.parity import FP32_TOLERANCE, Parity
    from skulens.deploy.tflite import export_tflite_checked

    path, q = tmp_path / "model.tflite", tmp_path / "model.int8.tflite"
    verdict = {"model.tflite": True, "model.int8.tflite": True}

    def export(bundle: Any, out: Any, **kw: Any) -> Path:
        Path(out).write_bytes(b"new")
        return Path(out)

    def quantize(src: Any, photos: Any, out: Any, **kw: Any) -> Path:
        Path(out).write_bytes(b"new int8")
        return Path(out)

    def parity(bundle: Any, file: Any, photos: Any) -> Parity:
        final = Path(file).with_name(Path(file).name.removesuffix(".tmp"))
        assert final.read_bytes().startswith(b"old")  # checked before it replaces anything
        ok = verdict[final.name]
        return Parity(str(file), 1, 1.0 if ok else 0.0, FP32_TOLERANCE / 2 if ok else 0.5)

    monkeypatch.setattr(tflite, "export_tflite", export)
    monkeypatch.setattr(tflite, "quantize_tflite_with_photos", quantize)
    monkeypatch.setattr(tflite, "tflite_parity", parity)

    def run(fp32_ok: bool, int8_ok: bool) -> None:
        path.write_bytes(b"old")
        q.write_bytes(b"old int8")
        verdict.update({"model.tflite": fp32_ok, "model.int8.tflite": int8_ok})
        export_tflite_checked("bundle", path, parity_photos=["a.jpg"], calibration_photos=["b.jpg"])

    with pytest.raises(ParityError, match=r"model\.tflite: LiteRT disagrees with PyTorch.*not written"):
        run(False, True)
    assert (path.read_bytes(), q.read_bytes()) == (b"old", b"old int8")
    with pytest.raises(ParityError, match=r"model\.int8\.tflite: .*int8 needs.*not written"):
        run(True, False)
    assert (path.read_bytes(), q.read_bytes()) == (b"new", b"old int8")
    run(True, True)
    assert (path.read_bytes(), q.read_bytes()) == (b"new", b"new int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.tflite", "model.tflite"]  # no .tmp left


# ---------------------------------------------------------------- a review of the deploy commands (session 30)


def test_quantizer_root_logger_lines_are_dropped_and_skulens_own_kept(caplog: pytest.LogCaptureFixture) -> None:
    """ONNX Runtime's quantizer logged ~140 "Increased scale[...]" INFO lines through the root logger, -q or not."""
    import logging

    from skulens.deploy.quantize import _without_root_info

    with caplog.at_level(logging.INFO), _without_root_info():
        logging.info("Increased scale[0] for weight `w`")  # noqa: LOG015 - what ONNX Runtime does
        logging.warning("a root warning stays")  # noqa: LOG015
        logging.getLogger("skulens.deploy").info("skulens' own line stays")
    assert [r.getMessage() for r in caplog.records] == ["a root warning stays", "skulens' own line stays"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        logging.info("after it: shown again")  # noqa: LOG015
    assert [r.getMessage() for r in caplog.records] == ["after it: shown again"]


def test_prune_bench_and_distill_refuse_what_they_would_ignore_or_fail_on_at_the_end(
        tiny_bundle, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("x")
    bundle = str(tiny_bundle.bundle)
    cases = [
        (["prune", "-m", bundle, "--no-recover", "--out", str(taken)], "a file is there"),
        (["prune", "-m", bundle, "--no-recover", "--kind", "unstructured", "--round-to", "8", "--out",
          str(tmp_path / "p")], "--round-to"),  # it was ignored
        (["bench", "-m", bundle, "--out", str(taken), "--variants", "baseline", "--limit", "2"], "a file is there"),
        (["distill", "-m", bundle, "--teacher", str(tmp_path / "other"), "--out", str(tmp_path / "d")],
         "give one"),  # --teacher was ignored
    ]
    for args, needle in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert taken.read_text() == "x" and not (tmp_path / "p").exists() and not (tmp_path / "d").exists()
    pruned = tmp_path / "pruned"
    assert main(["prune", "-m", bundle, "--no-recover", "--amount", "0.2", "--out", str(pruned), "-q"]) == 0
    capsys.readouterr()
    assert main(["prune", "-m", str(pruned / "pruned"), "--no-recover", "--out", str(tmp_path / "again")]) == 2
    assert "already pruned" in capsys.readouterr().err  # it was a traceback


def test_the_detection_rows_reach_bench_json_too(tmp_path: Path) -> None:
    """`bench --detector` printed its rows and appended them to bench.md only, then named bench.json among the
    results."""
    import json

    from skulens.deploy.bench import DetectionRow, write_detection_rows

    (tmp_path / "bench.json").write_text(json.dumps({"schema": 1, "rows": []}), encoding="utf-8")
    (tmp_path / "bench.md").write_text("| classifier rows |\n", encoding="utf-8")
    row = DetectionRow("detector (PyTorch) + classifier per box", 0.5, 2.0, 12.5, 1.0)
    table = write_detection_rows(tmp_path, [row])
    saved = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert saved["rows"] == [] and saved["detection"] == [{"name": row.name, "seconds_per_photo": 0.5,
                                                           "photos_per_s": 2.0, "boxes_per_photo": 12.5,
                                                           "megapixels": 1.0}]
    assert (tmp_path / "bench.md").read_text(encoding="utf-8") == "| classifier rows |\n\n" + table
    assert "| detector (PyTorch) + classifier per box | 0.50 | 2.00 | 12.5 | 1.00 |" in table


def test_exported_backends_check_the_device_and_name_a_litert_file(onnx_files: tuple[Path, Path], tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """device='bogus' was accepted by the ONNX and LiteRT loaders (PyTorch's refuses it), cuda was ignored by LiteRT
    unsaid, and a good .tflite given to --backend onnx was 'corrupt or truncated, export it again'."""
    import skulens
    from skulens.models.bundle import BundleError
    from skulens.models.inference import DeviceError

    with pytest.raises(DeviceError, match="unknown device 'bogus'"):
        skulens.load(onnx_files[0], backend="onnx", device="bogus")
    lite = tmp_path / "model.tflite"
    lite.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(100))  # a LiteRT flatbuffer's header
    with pytest.raises(DeviceError, match="unknown device 'bogus'"):
        skulens.load(lite, backend="tflite", device="bogus")
    with pytest.raises(BundleError, match=r"a LiteRT \(.tflite\) file, not ONNX: run it with --backend tflite"):
        skulens.load(lite, backend="onnx")
    with caplog.at_level("WARNING"), contextlib.suppress(Exception):  # the fake file itself need not load
        skulens.load(lite, backend="tflite", device="cuda")
    assert "LiteRT runs on the CPU: device cuda is not used" in caplog.text


def test_info_on_an_export_says_whose_metrics_it_shows(onnx_files: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`info` on an int8 file printed the fp32 bundle's val top-1 as if it were the file's own."""
    from skulens.cli import main

    assert main(["info", "-m", str(onnx_files[0])]) == 0
    out = capsys.readouterr().out
    assert "val metrics (of the PyTorch bundle this file was exported from" in out and "top1=" in out
