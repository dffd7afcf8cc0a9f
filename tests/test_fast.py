"""`skulens export --preset fast`: distil, export, quantize (float convs chosen by measurement) and check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skulens
from skulens.deploy.fast import float_node_sets, make_fast
from skulens.deploy.onnx import export_onnx
from skulens.deploy.quantize import calibration_inputs, quantize_onnx

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

DISTIL_TINY = {"image_size": 64, "train_image_size": 64, "epochs": 1, "max_steps": 2, "batch_size": 8,
               "ema": False, "baseline": False, "loggers": ""}


def _val(tiny_catalogue: Path) -> tuple[list[str], list[str]]:
    paths = sorted(tiny_catalogue.parent.rglob("val/*/*.jpg"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


def _top1(model, paths: list[str], labels: list[str]) -> float:
    return float(np.mean([p.fine_label == y for p, y in zip(model.predict(paths), labels, strict=True)]))


@pytest.fixture(scope="module")
def fast(tiny_bundle, tiny_catalogue: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "fast"
    messages: list[str] = []
    res = make_fast(tiny_bundle.bundle, out=out, data=tiny_catalogue, distil=True, calibration_images=16,
                    progress=False, say=messages.append, **DISTIL_TINY)
    return res, messages


def test_fast_folder_is_a_student_bundle_with_both_onnx_files(fast, tiny_bundle) -> None:
    res, messages = fast
    out = res.out
    for name in ("model.safetensors", "card.json", "model.onnx", "model.int8.onnx", "fast.json", "fast.md"):
        assert (out / name).is_file(), name
    assert not (out / "candidates").exists()
    card = json.loads((out / "card.json").read_text())
    assert card["backbone"] == "efficientnet_lite0"
    assert card["lineage"]["teacher"]["bundle"] == str(Path(tiny_bundle.bundle).resolve())
    assert res.distilled and [m[:5] for m in messages if m.startswith("[")] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size


def test_the_report_holds_what_the_files_do(fast, tiny_bundle, tiny_catalogue: Path) -> None:
    res, _ = fast
    paths, labels = _val(tiny_catalogue)
    assert res.n_check == len(paths) == 9 and res.check_split == "val"
    # every number is re-measured here through the public loaders
    assert res.teacher_top1 == pytest.approx(_top1(skulens.load(tiny_bundle.bundle, precision="off"), paths, labels))
    assert res.student_top1 == pytest.approx(_top1(skulens.load(res.out, backend="onnx"), paths, labels))
    assert res.int8_top1 == pytest.approx(_top1(skulens.load(res.out, backend="onnx-int8"), paths, labels))
    assert res.candidates[0].name == "all int8" and len(res.candidates) == 4
    sizes = [len(c.float_nodes) for c in res.candidates]
    assert sizes[0] == 0 and sizes == sorted(sizes) and sizes[-1] > 2
    chosen = next(c for c in res.candidates if c.name == res.chosen)
    ok = [c for c in res.candidates if 100 * (res.student_top1 - c.top1) <= 0.5 + 1e-9]
    if ok:
        assert chosen.images_per_s == max(c.images_per_s for c in ok)
    assert res.passed == (100 * (res.teacher_top1 - res.int8_top1) <= res.max_drop + 1e-9)
    report = json.loads((res.out / "fast.json").read_text())
    assert report["chosen"] == res.chosen and report["passed"] == res.passed
    assert f"| {res.chosen} |" in (res.out / "fast.md").read_text()
    # the chosen candidate's float convs are float in the written file: no DequantizeLinear feeds their weights
    graph = onnx.load(str(res.out / "model.int8.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "Conv" and node.name in chosen.float_nodes:
            weight = producer.get(node.input[1])
            assert weight is None or weight.op_type != "DequantizeLinear", node.name


def test_a_second_run_reuses_the_distilled_student(fast, tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    import shutil

    res, _ = fast
    out = tmp_path / "again"
    shutil.copytree(res.out, out)
    before = (out / "distill-run" / "bundle" / "model.safetensors").stat().st_mtime_ns
    messages: list[str] = []
    again = make_fast(tiny_bundle.bundle, out=out, data=tiny_catalogue, distil=True, calibration_images=16,
                      progress=False, say=messages.append, **DISTIL_TINY)
    assert any("reusing the student" in m for m in messages)
    assert (out / "distill-run" / "bundle" / "model.safetensors").stat().st_mtime_ns == before
    assert again.student_top1 == pytest.approx(res.student_top1)  # the same student, exported again
    other = _cli("export", "--model", str(res.out), "--preset", "fast", "--out", str(out))
    assert other.returncode == 2 and "holds a distillation from" in other.stderr
    with pytest.raises(FileExistsError, match="other epochs"):  # not silently the old student
        make_fast(tiny_bundle.bundle, out=out, data=tiny_catalogue, distil=True, calibration_images=16,
                  progress=False, say=messages.append, **{**DISTIL_TINY, "epochs": 2})
    no_epochs = {k: v for k, v in DISTIL_TINY.items() if k != "epochs"}  # the default, 10: not the 1-epoch student
    with pytest.raises(FileExistsError, match="other epochs"):
        make_fast(tiny_bundle.bundle, out=out, data=tiny_catalogue, distil=True, calibration_images=16,
                  progress=False, say=messages.append, **no_epochs)
    r = _cli("export", "--model", str(tiny_bundle.bundle), "--preset", "fast", "--out", str(out))
    assert r.returncode == 2 and "other epochs" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_earlier_run_says_what_an_out_folder_holds(tiny_bundle, tmp_path: Path) -> None:
    import json

    from skulens.deploy.fast import TEACHER_FILE, earlier_run, teacher_fingerprint

    teacher = tiny_bundle.bundle
    out = tmp_path / "out"
    assert earlier_run(out, teacher, "efficientnet_lite0") is None  # missing
    out.mkdir()
    assert earlier_run(out, teacher, "efficientnet_lite0") is None  # empty
    (out / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        earlier_run(out, teacher, "efficientnet_lite0")
    (out / "notes.txt").unlink()
    run = out / "distill-run"
    (run / "checkpoint").mkdir(parents=True)
    (run / TEACHER_FILE).write_text(json.dumps(teacher_fingerprint(teacher)))
    (run / "config.yaml").write_text(f"teacher: {teacher}\nbackbone: efficientnet_lite0\n")
    assert earlier_run(out, teacher, "efficientnet_lite0") == "stopped"  # killed mid-distillation: resume
    (run / "bundle").mkdir()
    (run / "bundle" / "card.json").write_text("{}")
    assert earlier_run(out, teacher, "efficientnet_lite0") == "stopped"  # a bundle of a best epoch, not finished
    (run / "checkpoint").rmdir()
    # a first best epoch's bundle, killed before its checkpoint: it was reused as the finished student
    assert earlier_run(out, teacher, "efficientnet_lite0") == "stopped"
    (run / "bundle" / "card.json").write_text(json.dumps({"metrics": {"best_epoch": 3}}))  # what a run's end writes
    assert earlier_run(out, teacher, "efficientnet_lite0") == "done"
    with pytest.raises(FileExistsError, match="into efficientnet_lite0, not from"):
        earlier_run(out, teacher, "efficientnet_lite2")  # another student
    with pytest.raises(FileExistsError, match="holds a distillation from"):
        earlier_run(out, tmp_path / "other", "efficientnet_lite0")
    # the teacher retrained or enrolled into since (here: another class list): its old student is not reused
    changed = {**teacher_fingerprint(teacher), "classes": ["only-one"]}
    (run / TEACHER_FILE).write_text(json.dumps(changed))
    with pytest.raises(FileExistsError, match="earlier version of"):
        earlier_run(out, teacher, "efficientnet_lite0")


def test_kept_float_convs_stay_float_and_unknown_names_are_refused(tiny_bundle, tiny_catalogue: Path,
                                                                   tmp_path: Path) -> None:
    fp32 = export_onnx(tiny_bundle.bundle, tmp_path / "m.onnx")
    sets = dict(float_node_sets(onnx.load(str(fp32))))
    convs = [n for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    assert sets["all int8"] == [] and sets["stem float"] == [convs[0].name]
    assert sets["stem + last conv float"] == [convs[0].name, convs[-1].name]
    depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) > 10 and set(depthwise) <= set(sets["stem + last conv + depthwise float"])
    card = skulens.load(tiny_bundle.bundle).card
    images, transform = calibration_inputs(_val(tiny_catalogue)[0][:4], card)
    q = quantize_onnx(fp32, tmp_path / "q.onnx", images, transform, keep_float=sets["stem float"])
    graph = onnx.load(str(q)).graph
    producer = {o: n for n in graph.node for o in n.output}
    stem = next(n for n in graph.node if n.name == convs[0].name)
    assert producer.get(stem.input[1]) is None or producer[stem.input[1]].op_type != "DequantizeLinear"
    second = next(n for n in graph.node if n.name == convs[1].name)
    assert producer[second.input[1]].op_type == "DequantizeLinear"  # the others did go int8
    with pytest.raises(ValueError, match="no node named nope"):
        quantize_onnx(fp32, tmp_path / "x.onnx", images, transform, keep_float=["nope"])
    with pytest.raises(ValueError, match="minmax or percentile"):
        quantize_onnx(fp32, tmp_path / "x.onnx", images, transform, method="entropy")
    p = quantize_onnx(fp32, tmp_path / "p.onnx", images, transform, method="percentile")
    out = skulens.load(p, backend="onnx").run(images)
    np.testing.assert_allclose(out.fine.sum(1), 1.0, atol=1e-4)
    # 20 photos: batches of 16 and 4, which ONNX Runtime's histogram cannot stack (a ValueError before the fix)
    p = quantize_onnx(fp32, tmp_path / "p20.onnx", images * 5, transform, method="percentile")
    assert p.is_file()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True, check=False)


def test_cli_preset_fast_then_predict_with_onnx_int8(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "fast"
    r = _cli("export", "--model", str(tiny_bundle.bundle), "--preset", "fast", "--out", str(out), "--data",
             str(tiny_catalogue), "--calibration-images", "8", "-q")
    report = json.loads((out / "fast.json").read_text())
    assert r.returncode == (0 if report["passed"] else 1), r.stderr
    assert "no distillation" in r.stderr  # the tiny bundle already is a Lite0
    assert not report["distilled"] and "--backend onnx-int8" in r.stderr
    paths, _ = _val(tiny_catalogue)
    p = _cli("predict", "--model", str(out), "--backend", "onnx-int8", *paths[:3])
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    expected = [x.fine_label for x in skulens.load(out, backend="onnx-int8").predict(paths[:3])]
    assert [row["fine_label"] for row in rows] == expected
    again = _cli("export", "--model", str(tiny_bundle.bundle), "--preset", "fast", "--out", str(out), "--data",
                 str(tiny_catalogue), "--calibration-images", "8", "-q")
    # no distillation to take up: the copy of the same bundle is made again (it was refused, and no advice worked)
    assert again.returncode == (0 if report["passed"] else 1) and "no distillation" in again.stderr, again.stderr


def test_cli_preset_fast_refuses_bad_flags(tiny_bundle, tmp_path: Path) -> None:
    b = str(tiny_bundle.bundle)
    r = _cli("export", "--model", b, "--preset", "fast", "--format", "tflite", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "--preset fast makes ONNX" in r.stderr
    r = _cli("export", "--model", b, "--student", "efficientnet_lite0")
    assert r.returncode == 2 and "--student belongs to --preset fast" in r.stderr
    r = _cli("export", "--model", b, "--preset", "fast", "--max-drop", "-1", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--max-drop" in r.stderr
    r = _cli("predict", "--model", b, "--backend", "onnx-int8", "x.jpg")
    assert r.returncode == 2 and "model.int8.onnx" in r.stderr
    r = _cli("bench", "--model", b, "--fast", str(tmp_path))
    assert r.returncode == 2 and "no model.int8.onnx" in r.stderr
    r = _cli("export", "--model", b, "--preset", "fast", "--int8", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "drop --int8" in r.stderr
    onnx_file = export_onnx(b, tmp_path / "m.onnx")
    r = _cli("export", "--model", str(onnx_file), "--preset", "fast", "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "needs a bundle folder" in r.stderr
    r = _cli("export", "--model", b, "--preset", "fast", "--check-split", "nope", "--out", str(tmp_path / "e"))
    assert r.returncode != 0 and "no 'nope' split" in r.stderr  # refused before any distillation
    assert not (tmp_path / "e" / "distill-run").exists()


def test_bench_measures_the_fast_folder_as_it_is(fast, tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from skulens.deploy.bench import bench_bundle, to_markdown

    res, _ = fast
    bench = bench_bundle(tiny_bundle.bundle, tiny_catalogue, out=tmp_path, runtimes=("baseline", "torch-fp32"),
                         fast=res.out, latency_images=2, repeats=1, isolate=False, threads=1, workers=1,
                         progress=False)
    rows = {r.name: r for r in bench.rows}
    assert list(rows) == ["default (baseline)", "default (torch-fp32)", "fast (onnx-int8)"]
    assert rows["fast (onnx-int8)"].top1 == pytest.approx(res.int8_top1)  # the preset's file, not a new export
    assert not (tmp_path / "models" / "fast").exists()
    md = to_markdown(bench)
    assert "Goal (>= 10x the baseline at <= 1 point below the default model's own fp32 top-1" in md
    # the 10x goal compares with the fp32 row, not with the baseline
    ref = bench.reference()
    quick = replace(rows["fast (onnx-int8)"], speedup=12.0, throughput_ips=1e4, top1=ref.top1 - 0.009,
                    top1_delta=+5.0)
    slow_ref = replace(ref, top1=quick.top1 + 0.02)
    assert replace(bench, rows=(bench.baseline, ref, quick)).goal(10.0, 1.0, against=ref) == quick
    assert replace(bench, rows=(bench.baseline, slow_ref, quick)).goal(10.0, 1.0, against=slow_ref) is None


@pytest.mark.timeout(300)
def test_ctrl_c_in_the_distillation_names_the_export_command_that_goes_on(tiny_bundle, tiny_catalogue: Path,
                                                                          tmp_path: Path) -> None:
    """The distillation inside `export --preset fast` stopped by Ctrl-C: the advice is that export again, which
    resumes the distillation and then exports (a `train --config ... --resume` would leave no ONNX files)."""
    from conftest import interrupt_after_checkpoint

    out = tmp_path / "fast"
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO); from skulens.deploy.fast import make_fast; "
              f"make_fast({str(tiny_bundle.bundle)!r}, out={str(out)!r}, data={str(tiny_catalogue)!r}, distil=True, "
              "calibration_images=8, progress=False, say=print, image_size=64, train_image_size=64, batch_size=8, "
              "ema=False, baseline=False, loggers='', epochs=500, patience=500)")
    _, err = interrupt_after_checkpoint([sys.executable, "-c", script], out / "distill-run" / "checkpoint")
    assert "KeyboardInterrupt" in err
    assert (f"to go on from it, run skulens export --model {tiny_bundle.bundle} --preset fast --out {out} (with the "
            "options it was started with") in err, err
