"""Flags that did nothing on some path are refused there (a flag that does nothing is a defect): each case ran
exit 0 before, its flag silently ignored (found by a review of every command's flags)."""

from __future__ import annotations

from pathlib import Path

from skulens.cli import main


def _val(tiny_catalogue: Path) -> str:
    return str(min((tiny_catalogue.parent / "val").rglob("*.jpg")))


def test_flags_of_a_path_not_taken_are_refused_before_any_work(tiny_bundle, tiny_catalogue: Path, tmp_path: Path,
                                                                capsys) -> None:
    bundle, photo = str(tiny_bundle.bundle), _val(tiny_catalogue)
    (tmp_path / "boxes").mkdir()
    cases = [
        (["tag", "-m", bundle, photo, "--mode", "aligned"], "--mode: setting(s) of the vocabulary tags"),
        (["tag", "-m", bundle, photo, "--min-score", "0.9", "-k", "3"], "--min-score, -k/--top-k"),
        (["predict", "-m", bundle, photo, "--format", "csv", "-o", str(tmp_path / "x.jsonl")],
         "--format csv into"),
        (["export", "-m", bundle, "--data", "/nonexistent"], "this export reads none"),
        (["robustness", "-m", bundle, "--data", str(tiny_catalogue), "--attacks", "fgsm", "--eps", "1",
          "--pgd-steps", "50", "--corruptions", "none", "-o", str(tmp_path / "rob")], "--pgd-steps"),
        (["bench", "-m", bundle, "--data", str(tiny_catalogue), "--detection-photos", "5", "-o",
          str(tmp_path / "b1")], "--detection-photos: a setting of rows this run does not measure"),
        (["bench", "-m", bundle, "--data", str(tiny_catalogue), "--extra-runtimes", "onnx-int8", "-o",
          str(tmp_path / "b2")], "--extra-runtimes"),
        (["bench", "-m", bundle, "--data", str(tiny_catalogue), "--variants", "baseline", "--calibration-images",
          "8", "-o", str(tmp_path / "b3")], "no int8 variant"),
        (["recommend", "for", "--events", str(tmp_path / "ev.csv"), "--similar", "oat-milk", "--seed-product",
          "red-apple"], "--seed-product: a setting of a user's recommendations"),
        (["detect", "train", "--no-composites", "--boxes", str(tmp_path / "boxes"), "--data", str(tiny_catalogue),
          "--workers", "3", "-o", str(tmp_path / "det")], "--data, --workers: setting(s) of the composites"),
        # (--eval-every stays: it spaces the loss history's rows without composites too)
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (argv, err)
    for out in ("x.jsonl", "rob", "b1", "b2", "b3", "det"):
        assert not (tmp_path / out).exists(), out
    assert not (tiny_bundle.bundle / "model.onnx").exists()


def test_a_loss_weight_for_what_the_catalogue_lacks_is_said_unused(tmp_path: Path, caplog) -> None:
    import skulens
    from conftest import TINY, write_folder_catalogue

    (tmp_path / "cat").mkdir()
    write_folder_catalogue(tmp_path / "cat", seed=1, per_class=4)  # no coarse classes, no attributes
    with caplog.at_level("WARNING"):
        skulens.train(tmp_path / "cat", out=str(tmp_path / "run"), progress=False, coarse_loss_weight=0.9,
                      attribute_loss_weight=0.3, **{**TINY, "epochs": 1, "max_steps": 1})
    assert "coarse_loss_weight 0.9 is not used" in caplog.text and "attribute_loss_weight 0.3 is not used" in caplog.text
