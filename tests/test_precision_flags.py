"""--precision on every command that runs the classifier or the embedding model in PyTorch.

Only predict, evaluate and explain took it: index build, tag, count, inventory scan and suggest-labels ran at
`auto` (bf16 on CPUs with AVX512-BF16/AMX), so a CLI user could not get fp32 answers, as ONNX Runtime gives, from
them. Each check below fails where the flag is ignored on any machine: bf16 and off must give different numbers,
and off must give what the Python API gives at fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skulens.cli import main


def _val(tiny_catalogue: Path) -> list[str]:
    return sorted(str(p) for p in (tiny_catalogue.parent / "val").rglob("*.jpg"))


def test_index_build_embeds_at_the_precision_asked(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    import skulens
    from skulens.search.index import open_index

    common = ["index", "build", "-m", str(tiny_bundle.bundle), "--data", str(tiny_catalogue), "-q"]
    assert main([*common, "--out", str(tmp_path / "off"), "--precision", "off"]) == 0
    assert main([*common, "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    off, bf16 = open_index(str(tmp_path / "off")), open_index(str(tmp_path / "bf16"))
    recs = sorted(off.records(), key=lambda r: r.id)
    ids = [r.id for r in recs]
    want = skulens.load(tiny_bundle.bundle, device="cpu", precision="off").embed(
        [str(tiny_catalogue.parent / r.image) for r in recs])
    got = off.vectors(ids)
    assert np.allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    assert np.abs(bf16.vectors(ids) - got).max() > 1e-4  # bf16 numerics, not fp32 again


def test_tag_and_suggest_labels_take_precision(tiny_bundle, tiny_catalogue: Path, tmp_path: Path, capsys) -> None:
    import skulens

    photos = _val(tiny_catalogue)[:4]
    def tags(precision: str) -> list[float]:
        assert main(["tag", "-m", str(tiny_bundle.bundle), *photos, "--precision", precision, "-q"]) == 0
        # the attributes' confidences: the tiny model's classes are all at 1.0 in any numerics
        return [p for line in capsys.readouterr().out.splitlines() for p in json.loads(line)["attributes"].values()]

    off = tags("off")
    want = skulens.tag(photos, tiny_bundle.bundle, precision="off", device="cpu")
    assert off and off == pytest.approx([p for w in want for _, p in w.attributes], abs=2e-6)
    assert max(abs(a - b) for a, b in zip(off, tags("bf16"), strict=True)) > 1e-5
    with pytest.raises(ValueError, match="loaded already"):  # beside a loaded model it would be ignored
        skulens.tag(photos, skulens.load(tiny_bundle.bundle), precision="off")

    folder = tmp_path / "photos"  # the manifest lies beside the photos it names
    folder.mkdir()
    for photo in _val(tiny_catalogue):
        (folder / Path(photo).name).write_bytes(Path(photo).read_bytes())

    def manifest(precision: str) -> list[str]:
        out = folder / f"{precision}.csv"
        assert main(["suggest-labels", "-m", str(tiny_bundle.bundle), str(folder), "--budget", "4", "-o", str(out),
                     "--precision", precision, "-q"]) == 0
        return out.read_text().splitlines()

    off, bf16 = manifest("off"), manifest("bf16")
    assert len(off) == len(bf16) == 5 and off != bf16  # the guesses' confidences differ in their digits


def test_count_takes_the_classifiers_precision(tiny_bundle, tiny_catalogue: Path, detector: Path,
                                               tmp_path: Path, capsys) -> None:
    photos = _val(tiny_catalogue)[:3]
    base = ["count", *photos, "--detector", str(detector), "-m", str(tiny_bundle.bundle), "--min-score", "0",
            "--min-confidence", "0", "-q"]

    def confidences(precision: str) -> list[float]:
        assert main([*base, "--precision", precision]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return [b["confidence"] for r in rows for b in r["boxes"]]

    off, bf16 = confidences("off"), confidences("bf16")
    assert off and len(off) == len(bf16)
    assert max(abs(a - b) for a, b in zip(off, bf16, strict=True)) > 1e-5
    # the detector alone: the flag would do nothing; --backend is the detector's, not the classifier's
    assert main(["count", photos[0], "--detector", str(detector), "--precision", "off", "-q"]) == 2
    assert "needs -m/--model" in capsys.readouterr().err


@pytest.mark.parametrize("args,why", [
    (["index", "build", "-o", "{tmp}/i", "--precision", "fp16", "--device", "cpu"], "for CUDA"),
    (["tag", "{photo}", "--precision", "fp16", "--device", "cpu"], "for CUDA"),
    (["suggest-labels", "{photo}", "--budget", "1", "--precision", "fp16", "--device", "cpu"], "for CUDA"),
    (["inventory", "scan", "{tmp}", "--db", "{tmp}/inv.db", "--precision", "fp16", "--device", "cpu"], "for CUDA"),
])
def test_fp16_on_the_cpu_is_refused_before_work(args, why, tiny_bundle, tiny_catalogue: Path, tmp_path: Path,
                                                capsys) -> None:
    fill = {"tmp": str(tmp_path), "photo": _val(tiny_catalogue)[0]}
    argv = [a.format(**fill) for a in args]
    assert main([*argv, "-m", str(tiny_bundle.bundle)]) == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "i").exists() and not (tmp_path / "inv.db").exists()
