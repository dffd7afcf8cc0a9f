"""train, evaluate and suggest-labels on a user's mistakes, told before the work (a new user's review,
session 24): an output path that is a file, a --teacher or --init-from that is not a usable bundle, a photo
folder that does not exist, -o naming a folder, a pool with no readable photo."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_rows


def _skulens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skulens.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False, cwd=cwd)


def _one_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and all(n in r.stderr for n in needles), r.stderr


def test_train_refuses_bad_outputs_and_bundles_before_any_work(tiny_catalogue: Path, tiny_bundle,
                                                                tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    base = ["train", "--data", str(tiny_catalogue), "--backbone", "efficientnet_lite0", "--image-size", "64",
            "--epochs", "1", "--loggers="]
    r = _skulens(*base, "-o", str(a_file), "--holdout-fraction", "0.3", "--pseudo-precision", "0.8",
                 "--distill-alpha", "0.2", "--distill-temperature", "2")
    _one_line(r, "a file is there")
    assert "holdout_fraction 0.3 is not used" in r.stderr and "pseudo_precision 0.8 is not used" in r.stderr
    assert "distill_alpha 0.2 is not used" in r.stderr and "distill_temperature 2 is not used" in r.stderr
    _one_line(_skulens(*base, "-o", str(a_file / "sub")), "is a file, not a folder")
    _one_line(_skulens(*base, "-o", str(tmp_path / "t1"), "--teacher", str(tmp_path / "nope")), "--teacher",
              "not a bundle")
    lite2 = tmp_path / "lite2"
    lite2.mkdir()
    card = (tiny_bundle.bundle / "card.json").read_text().replace('"efficientnet_lite0"', '"efficientnet_lite2"')
    assert '"efficientnet_lite2"' in card
    (lite2 / "card.json").write_text(card)
    r = _skulens(*base, "-o", str(tmp_path / "t2"), "--init-from", str(lite2))
    _one_line(r, "is a efficientnet_lite2", "--backbone efficientnet_lite2")
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()  # refused before the run folder


def test_evaluate_refuses_an_output_that_is_a_file(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    _one_line(_skulens("evaluate", "-m", str(tiny_bundle.bundle), "--data", str(tiny_catalogue), "--out",
                       str(a_file)), "a file is there")
    assert a_file.read_text() == "x"
    r = _skulens("evaluate", "-m", str(tiny_bundle.bundle), "--data", str(tiny_catalogue), "--out",
                 str(tmp_path / "ev"), "--baseline", "-q")
    assert r.returncode == 0 and "baseline" in r.stderr and "change" in r.stderr, r.stderr  # on the terminal too


def test_suggest_labels_on_a_missing_folder_an_output_folder_and_no_readable_photo(tiny_bundle, tiny_catalogue: Path,
                                                                                    tmp_path: Path) -> None:
    model = ["-m", str(tiny_bundle.bundle), "--budget", "2", "-q"]
    _one_line(_skulens("suggest-labels", str(tmp_path / "nope"), *model, "-o", str(tmp_path / "x.csv")),
              "nope: no such file or folder")
    assert not (tmp_path / "x.csv").exists()
    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))[:4]:
        (pool / photo.name).write_bytes(photo.read_bytes())
    r = _skulens("suggest-labels", str(pool), *model, "-o", str(tmp_path))  # a folder (above the photos): its
    assert r.returncode == 0, r.stderr                                    # to_label.csv, not IsADirectoryError
    assert len((tmp_path / "to_label.csv").read_text().splitlines()) == 3  # header + the budget
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a photo")
    r = _skulens("suggest-labels", str(broken), *model)
    assert r.returncode == 1 and "nothing written" in r.stderr, r.stderr
    assert not (broken / "to_label.csv").exists()  # no header-only manifest to stand in the way of a rerun
    assert _skulens("suggest-labels", str(broken), *model).returncode == 1  # and a rerun is not refused


def test_suggest_labels_lists_each_photo_once_and_writes_only_a_csv(tiny_bundle, tiny_catalogue: Path,
                                                                  tmp_path: Path) -> None:
    """`suggest-labels pool pool` ranked each photo twice (the budget spent on repeats; the filled-in manifest was
    refused: "listed already"); `-o s.jsonl` wrote CSV under a name `train` reads as JSON lines."""
    from skulens.data.catalogue import load_catalogue

    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))[:4]:
        (pool / photo.name).write_bytes(photo.read_bytes())
    model = ["-m", str(tiny_bundle.bundle), "-q", "--strategy", "margin"]
    first = min(pool.glob("*.jpg"))
    r = _skulens("suggest-labels", str(pool), str(pool), str(first), str(pool / "*.jpg"), *model, "--budget", "10",
                 "-o", str(pool / "s.csv"))
    assert r.returncode == 0, r.stderr
    assert "given more than once are ranked once" in r.stderr and "the 4 of 4 photos" in r.stderr
    rows = list(csv.DictReader((pool / "s.csv").open()))
    assert sorted(x["path"] for x in rows) == sorted(p.name for p in pool.glob("*.jpg"))
    rows = [{**x, "label": "oat-milk"} for x in rows]
    write_rows(pool / "s.csv", rows)
    assert len(load_catalogue(pool / "s.csv", val_fraction=0).split("train")) == 4
    for name in ("s.jsonl", "s.txt", "labels"):
        _one_line(_skulens("suggest-labels", str(pool), *model, "--budget", "2", "-o", str(pool / name)),
                  "the manifest is CSV: name it *.csv")
        assert not (pool / name).exists()


@pytest.mark.parametrize("flag", ["--unlabeled"])
def test_self_training_with_no_readable_photo_is_an_error(tiny_bundle, tiny_catalogue: Path, tmp_path: Path,
                                                          flag: str) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.jpg").write_bytes(b"not a photo")
    r = _skulens("train", "--data", str(tiny_catalogue), flag, str(pool), "--teacher", str(tiny_bundle.bundle),
                 "-o", str(tmp_path / "run"), "--backbone", "efficientnet_lite0", "--image-size", "64", "--epochs",
                 "1", "--loggers=", "--no-baseline", "-q")
    _one_line(r, "none of its 1 photos could be read")


def test_retrain_and_distill_refuse_an_out_that_is_a_file(tiny_bundle, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A traceback (FileExistsError) after the catalogue had loaded; train and prune said it in one line."""
    from skulens.cli import main

    taken = tmp_path / "afile"
    taken.write_text("mine")
    for argv in (["retrain", "--model", str(tiny_bundle.bundle), "--out", str(taken)],
                 ["distill", "--model", str(tiny_bundle.bundle), "--out", str(taken)]):
        assert main(argv) == 2
        assert "--out" in capsys.readouterr().err and taken.read_text() == "mine"


def test_settings_of_another_mode_are_said_to_be_unused(caplog: pytest.LogCaptureFixture) -> None:
    from skulens.config import resolve_config
    from skulens.config import warn_unused as _warn_unused

    cfg = resolve_config({"freeze": "full", "trainable_stages": 3, "gradual_head_epochs": 2, "momentum": 0.5,
                          "ema": False, "ema_decay": 0.9, "adversarial_eps": 4.0, "adversarial_steps": 5})
    with caplog.at_level("WARNING"):
        _warn_unused(cfg)
    for name in ("trainable_stages 3", "gradual_head_epochs 2", "momentum 0.5", "ema_decay 0.9",
                 "adversarial_eps 4.0", "adversarial_steps 5"):
        assert f"{name} is not used" in caplog.text, name
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_unused(resolve_config({"freeze": "partial", "trainable_stages": 3, "optimizer": "sgd",
                                     "momentum": 0.5}))
        _warn_unused(resolve_config({"adversarial": "pgd", "adversarial_steps": 7, "backbone_lr_mult": 0.2}))
    assert "not used" not in caplog.text
    # a backbone frozen whole learns at no rate; FGSM is one step whatever the steps say
    with caplog.at_level("WARNING"):
        _warn_unused(resolve_config({"freeze": "head", "backbone_lr_mult": 0.01, "adversarial": "fgsm",
                                     "adversarial_steps": 7}))
    assert "backbone_lr_mult 0.01 is not used" in caplog.text and "adversarial_steps 7 is not used" in caplog.text
    # settings that make another one do nothing: a gradual run that never unfreezes, a run that is all warm-up
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_unused(resolve_config({"freeze": "gradual", "gradual_head_epochs": 5, "epochs": 2,
                                     "warmup_epochs": 5}))
        _warn_unused(resolve_config({"schedule": "onecycle", "epochs": 4, "warmup_epochs": 3}))
    assert "the backbone never unfreezes" in caplog.text and "the whole run is warm-up" in caplog.text
    assert "one-cycle warms up for at most half the run" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_unused(resolve_config({"freeze": "gradual", "gradual_head_epochs": 1, "epochs": 3}))
    assert caplog.text == ""
    other = "train" if resolve_config({}).batch_norm == "frozen" else "frozen"
    with caplog.at_level("WARNING"):
        _warn_unused(resolve_config({"freeze": "partial", "batch_norm": other}))
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        _warn_unused(resolve_config({"freeze": "head", "batch_norm": other}))
    assert f"batch_norm {other} is not used" in caplog.text


def test_weights_beside_a_warm_start_are_said_unused_and_the_help_gives_each_commands_defaults(
        caplog: pytest.LogCaptureFixture) -> None:
    """`retrain --weights random` (and `train --init-from B --weights ...`) logged a random start and recorded it,
    and the warm start replaced the whole backbone: bit-identical weights. retrain's, distill's and prune's help
    gave TrainConfig's defaults (224 px, Lite2, 10 epochs), which those commands do not run."""
    import contextlib
    import io

    from skulens.cli import build_parser
    from skulens.config import resolve_config, warn_unused

    with caplog.at_level("WARNING"):
        warn_unused(resolve_config({"init_from": "runs/a/bundle", "weights": "random"}))
    assert "weights random is not used: the run starts from runs/a/bundle's backbone" in caplog.text

    def help_of(*command: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--help"])
        return " ".join(out.getvalue().split())

    retrain = help_of("retrain")
    assert "(default: the bundle's run's)" in retrain and "(default: 224)" not in retrain
    assert "--baseline, --no-baseline" in retrain and "(default: False)" in retrain
    assert "(default: efficientnet_lite0, the student)" in help_of("distill")
    prune = help_of("prune")
    assert "(default: the bundle's (kept))" in prune and "(default: 3)" in prune  # epochs: the recovery's
    # a retrain or a pruned bundle's recovery starts from its bundle: no flag that could never take effect, and
    # the defaults of the settings retrain does not take from the bundle's run are TrainConfig's
    for text in (retrain, prune):
        assert not {"--init-from", "--weights", "--head-init"} & set(text.split()), text
    assert "the teacher is this right (default: 0.95)" in retrain and "next one's teacher (default: 1)" in retrain


def test_serve_refuses_settings_of_parts_it_was_not_given() -> None:
    """`serve --detector-max-boxes 5 --detector-tiles off --keep-uploads --review-threshold 0.9` without a detector
    or a database started without a word (inventory scan refuses the same)."""
    from skulens.config import ConfigError
    from skulens.serve.settings import ServeSettings

    for kw, needle in (({"detector_max_boxes": 5}, "detector_max_boxes: setting(s) of the detector"),
                       ({"detector_tiles": "off", "db": "x.db"}, "detector_tiles: setting(s) of the detector"),
                       ({"keep_uploads": True}, "keep_uploads: keeps intake photos (give a db) and the photos"),
                       # no inventory and no behaviour log: nothing keeps a user id for the key to hide
                       ({"pseudonym_key_file": "k", "index": "ix"}, "pseudonym_key_file: the key of the user ids"),
                       ({"review_threshold": 0.9, "labelled_dir": "lab"}, "review_threshold, labelled_dir"),
                       ({"detector": "det"}, "detector: setting(s) of the inventory"),
                       ({"recommend_refit_s": 5}, "recommend_refit_s is a setting of recommendations")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            ServeSettings(model="m", **kw)
    assert ServeSettings(model="m", db="x.db", keep_uploads=True, review_threshold=0.9).keep_uploads
    # enrolment (POST /v1/products) keeps its photos on a server with an index and no inventory
    assert ServeSettings(model="m", index="ix", keep_uploads=True).keep_uploads
    assert ServeSettings(model="m", events="e.csv", pseudonym_key_file="k").pseudonym_key_file == "k"
