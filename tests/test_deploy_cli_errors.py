"""export, predict, bench on a user's mistakes (a new user's review, session 24): a corrupt ONNX file, an
--out that is a folder or another bundle's, an fp32 file given to the int8 backend, bench rows that would not
be comparable, and --preset fast options that do nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True, check=False,
                          timeout=600)


def _one_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and all(n in r.stderr for n in needles), r.stderr


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with its model.onnx."""
    from skulens.deploy.onnx import export_onnx

    b = tmp_path_factory.mktemp("deploy") / "bundle"
    shutil.copytree(tiny_bundle.bundle, b)
    export_onnx(b, b / "model.onnx")
    return b


def test_a_corrupt_onnx_file_is_one_line(exported: Path, tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.models.bundle import BundleError
    from skulens.models.onnx_runtime import OnnxRunner, read_onnx_card

    bad = tmp_path / "bundle"
    shutil.copytree(exported, bad)
    (bad / "model.onnx").write_bytes((exported / "model.onnx").read_bytes()[:100_000])  # a copy cut short
    photo = str(next((tiny_catalogue.parent / "val").rglob("*.jpg")))
    _one_line(_cli("predict", "-m", str(bad), "--backend", "onnx", photo), "not a readable ONNX file",
              "skulens export")
    for reader in (read_onnx_card, OnnxRunner):
        with pytest.raises(BundleError, match="corrupt or truncated"):
            reader(bad / "model.onnx")


def test_export_out_is_checked_before_the_export(exported: Path, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    _one_line(_cli("export", "-m", str(exported), "--out", str(tmp_path / "adir")), "a folder is there")
    other = tmp_path / "other"  # another model's bundle, with weights: its export must not be replaced
    shutil.copytree(exported, other)
    card = json.loads((other / "card.json").read_text())
    card["classes"] = [*card["classes"][:-1], "something-else"]
    (other / "card.json").write_text(json.dumps(card))
    before = (other / "model.onnx").read_bytes()
    _one_line(_cli("export", "-m", str(exported), "--out", str(other / "model.onnx")), "another model's bundle")
    assert (other / "model.onnx").read_bytes() == before
    r = _cli("export", "-m", str(exported), "--out", str(tmp_path / "new" / "deep" / "m.onnx"))  # parents made
    assert r.returncode == 0 and (tmp_path / "new" / "deep" / "m.onnx").is_file(), r.stderr


def test_the_int8_backend_refuses_an_fp32_file(exported: Path, tiny_catalogue: Path, tmp_path: Path) -> None:
    import skulens
    from skulens.models.bundle import BundleError

    with pytest.raises(BundleError, match="has no quantized node"):
        skulens.load(exported / "model.onnx", backend="onnx-int8")
    # an int8 graph under any name runs: the graph decides, not the file name
    from skulens.data.catalogue import load_catalogue
    from skulens.deploy.quantize import quantize_onnx_with_photos

    photos = [s.path for s in load_catalogue(tiny_catalogue).split("train")][:8]
    q = quantize_onnx_with_photos(exported / "model.onnx", photos, tmp_path / "sku_q.onnx")
    assert skulens.load(q, backend="onnx-int8").card.classes == skulens.load(exported).card.classes


def test_bench_refuses_rows_that_would_not_compare(exported: Path, tiny_catalogue: Path, tmp_path: Path) -> None:
    base = ["bench", "-m", str(exported), "--data", str(tiny_catalogue), "--out", str(tmp_path / "b")]
    _one_line(_cli(*base, "--extra", f"default={exported}"), "the name 'default' is taken")
    _one_line(_cli(*base, "--distilled", str(exported), "--extra", f"distilled={exported}"), "is taken")
    _one_line(_cli(*base, "--extra", f"x={tmp_path / 'nope'}"), "--extra x", "not a bundle")
    fast = tmp_path / "fast"  # a fast folder made from a model of other products
    fast.mkdir()
    shutil.copy(exported / "model.onnx", fast / "model.int8.onnx")
    card = json.loads((exported / "card.json").read_text())
    (fast / "card.json").write_text(json.dumps({**card, "classes": card["classes"][:2]}))
    _one_line(_cli(*base, "--fast", str(fast)), "other products")
    assert not (tmp_path / "b").exists()  # nothing was measured


def test_preset_fast_epochs_without_a_distillation_and_a_rerun(exported: Path, tmp_path: Path) -> None:
    from skulens.deploy.distill import DEFAULT_STUDENT
    from skulens.deploy.fast import earlier_run

    card = json.loads((exported / "card.json").read_text())
    assert card["backbone"] == DEFAULT_STUDENT  # the tiny bundle already is the student
    _one_line(_cli("export", "-m", str(exported), "--preset", "fast", "--epochs", "5", "--out",
                   str(tmp_path / "f")), "nothing is distilled")
    out = tmp_path / "copy"  # what a run without distillation leaves: the teacher copied, its exports
    out.mkdir()
    for name in ("card.json", "model.safetensors", "model.onnx"):
        shutil.copy(exported / name, out / name)
    assert earlier_run(out, exported, DEFAULT_STUDENT, distilled=False) is None  # made again, not "give a new folder"
    # a run that distils would write its student over that copy of the teacher (a backup, say): refused
    with pytest.raises(FileExistsError, match="not empty"):
        earlier_run(out, exported, DEFAULT_STUDENT, distilled=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        earlier_run(out, exported, DEFAULT_STUDENT, distilled=False)


def test_preset_fast_never_writes_over_its_teacher(exported: Path, tmp_path: Path) -> None:
    """`export -m B --preset fast --out B` distilled, then wrote the student's weights and card over the
    teacher's (a Lite2 teacher lost); with a Lite0 teacher it was a SameFileError traceback."""
    before = {p.name: p.read_bytes() for p in exported.iterdir() if p.is_file()}
    for out in (exported, exported / "fast", exported.parent):
        _one_line(_cli("export", "-m", str(exported), "--preset", "fast", "--out", str(out)),
                  "give a new folder")
    assert {p.name: p.read_bytes() for p in exported.iterdir() if p.is_file()} == before
    assert not (exported / "fast").exists()


def test_preset_fast_names_a_teacher_without_weights(exported: Path, tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    shutil.copy(exported / "card.json", teacher / "card.json")
    _one_line(_cli("export", "-m", str(teacher), "--preset", "fast", "--out", str(tmp_path / "f")),
              "no model.safetensors")
    (teacher / "model.safetensors").write_bytes((exported / "model.safetensors").read_bytes()[:1000])
    _one_line(_cli("export", "-m", str(teacher), "--preset", "fast", "--out", str(tmp_path / "f")),
              f"BundleError: {teacher / 'model.safetensors'}: unreadable")
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())  # nothing copied before the check


def test_export_names_its_file_by_its_format_and_checks_int8_inputs_first(exported: Path, tmp_path: Path) -> None:
    """`export -o bundle/model.safetensors` replaced the bundle's weights with an ONNX file (exit 0); a TorchScript
    file named .onnx was later "corrupt, export it again"; with --int8 a bad calibration split was refused only
    after model.onnx had been replaced."""
    weights = (exported / "model.safetensors").read_bytes()
    _one_line(_cli("export", "-m", str(exported), "-o", str(exported / "model.safetensors")),
              "onnx files are named *.onnx")
    assert (exported / "model.safetensors").read_bytes() == weights
    _one_line(_cli("export", "-m", str(exported), "--format", "torchscript", "-o", str(tmp_path / "ts.onnx")),
              "torchscript files are named *.pt")
    before = (exported / "model.onnx").stat().st_mtime_ns
    _one_line(_cli("export", "-m", str(exported), "--int8", "--calibration-split", "bogus", "-q"), "bogus")
    assert (exported / "model.onnx").stat().st_mtime_ns == before  # not exported again before the refusal
    # bench reads a bundle: its hint named a --backend flag bench does not have
    _one_line(_cli("bench", "-m", str(exported / "model.onnx"), "-o", str(tmp_path / "b")),
              "bench reads a bundle", "not an exported file")


def test_torchscript_export_to_a_full_disk_is_one_line_and_leaves_nothing(exported: Path, tmp_path: Path) -> None:
    """libtorch wrote the file itself and aborted the process on a full disk (SIGABRT, a C++ stack trace, the .tmp
    left behind). A file-size limit (RLIMIT_FSIZE, EFBIG) stands in for the full disk here."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))\n"
            "from skulens.cli import main\n"
            f"sys.exit(main(['export', '-m', {str(exported)!r}, '--format', 'torchscript', "
            f"'--out', {str(tmp_path / 'm.pt')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert "storage full" in r.stderr and "Traceback" not in r.stderr and "c10::Error" not in r.stderr
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m.pt").write_bytes(b"the earlier export")  # and an earlier file there is left as it was
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 3 and (tmp_path / "m.pt").read_bytes() == b"the earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_tflite_export_checks_its_out_before_converting(exported: Path, tiny_bundle, tmp_path: Path) -> None:
    """--out in another bundle's folder was refused only after the minute-long conversion (and a missing folder
    failed there with a FileNotFoundError); the checks ONNX makes up front now come first for tflite too."""
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle.bundle, other)
    card = json.loads((other / "card.json").read_text())
    (other / "card.json").write_text(json.dumps({**card, "created": "another run"}))
    _one_line(_cli("export", "-m", str(exported), "--format", "tflite", "--out", str(other / "model.tflite")),
              "holds another model's bundle")
    assert not (other / "model.tflite").exists()
