"""Training as a new user runs it (a review's findings): a diverged run keeps no bundle, numbers that are no numbers
and settings this machine cannot run are refused before the photos are decoded, a run's recorded paths name the
same files from any folder, a config file that is not UTF-8 is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from skulens.api import train
from skulens.cli import main
from skulens.config import ConfigError, load_config, resolve_config


@pytest.mark.parametrize("key, value", [("lr", "inf"), ("lr", "nan"), ("weight_decay", "inf"),
                                        ("warmup_epochs", "nan"), ("coarse_loss_weight", "-1"), ("batch_size", "1")])
def test_numbers_that_are_no_numbers_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: must be"):
        resolve_config({key: value})


def test_a_diverged_run_stops_and_keeps_no_bundle(tiny_catalogue: Path, tmp_path: Path, capsys) -> None:
    """lr 1e30: the loss became NaN, epoch 1 was still selected (argmax of NaN is class 0, a third right) and saved
    as the bundle, and `predict` answered with confidence nan."""
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_catalogue), "--out", str(out), "-q", "--backbone", "efficientnet_lite0",
               "--image-size", "64", "--train-image-size", "64", "--no-baseline", "--no-ema", "--loggers", "",
               "--epochs", "1", "--lr", "1e30"])
    err = capsys.readouterr().err
    assert rc == 1 and "the run diverged; lower the learning rate (lr 1e+30)" in err, err[-2000:]
    assert "Traceback" not in err and not (out / "bundle").exists()


def test_settings_this_machine_cannot_run_are_refused_before_the_photos(tiny_bundle, tiny_catalogue: Path,
                                                                         tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    from skulens.train import engine

    def too_late(*a, **k):
        raise AssertionError("the photos were decoded first")

    monkeypatch.setattr(engine, "_load_splits", too_late)
    with pytest.raises(ConfigError, match="fp16 is for CUDA GPUs"):
        train(tiny_catalogue, out=str(tmp_path / "a"), progress=False, device="cpu",
              **{**TINY, "mixed_precision": "fp16"})
    other = tmp_path / "other-teacher"  # a bundle of another catalogue: its classes are not the student's
    other.mkdir()
    card = json.loads((tiny_bundle.bundle / "card.json").read_text())
    (other / "card.json").write_text(json.dumps({**card, "classes": ["something-else"]}))
    with pytest.raises(ConfigError, match="does not know the student's class"):
        train(tiny_catalogue, out=str(tmp_path / "t"), progress=False, device="cpu", teacher=str(other), **TINY)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'skulens\[mlflow\]'"):
        train(tiny_catalogue, out=str(tmp_path / "b"), progress=False, device="cpu", **{**TINY, "loggers": "mlflow"})


def test_a_run_records_absolute_paths_so_resume_works_from_another_folder(tiny_catalogue: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    train(os.path.relpath(tiny_catalogue, tmp_path), out="runs/rel", progress=False, max_steps=1,
          **{**TINY, "epochs": 1})
    recorded = yaml.safe_load((tmp_path / "runs/rel/config.yaml").read_text())
    umask = os.umask(0)
    os.umask(umask)
    for f in ("model.safetensors", "card.json"):  # the weights were 0600 (safetensors' own mode), the card not
        assert (tmp_path / "runs/rel/bundle" / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
    assert recorded["out"] == str(tmp_path / "runs/rel") and recorded["data"] == str(tiny_catalogue)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the advised `--config runs/rel/config.yaml --resume` finds the run it names
    with pytest.raises(ConfigError, match="this run finished"):
        train(config_file=tmp_path / "runs/rel/config.yaml", resume=True, progress=False)
    assert not (elsewhere / "runs").exists()  # no new run started here


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes("# réglages\nlr: 0.01\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c.yaml: not UTF-8 \(byte 0xe9"):
        load_config(path)


@pytest.mark.parametrize("size", [16, 32, 224])
def test_robust_augmentation_runs_at_every_training_size(size: int) -> None:
    """Under about 38 px the blur's sigma range (0.5, 3 * size / 224) was empty: a ValueError at the first batch."""
    import torch

    from skulens.data.transforms import create_transform
    from skulens.models.backbones import get_spec

    torch.manual_seed(0)
    tf = create_transform(get_spec("efficientnet_lite0"), train=True, augment="robust", train_size=size)
    x = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    assert all(tf(x).shape == (3, size, size) for _ in range(30))  # blur on a fifth of the calls


def test_one_photo_a_class_says_the_val_split_is_empty(tmp_path: Path) -> None:
    """It said "no decodable images in the train, val or val split" of photos that all decode."""
    from PIL import Image

    from skulens.data.catalogue import CatalogueError

    for i, label in enumerate(("a", "b", "c")):
        (tmp_path / "cat" / label).mkdir(parents=True)
        Image.new("RGB", (64, 64), (80 * i, 40, 200)).save(tmp_path / "cat" / label / "1.jpg")
    with pytest.raises(CatalogueError, match=r"the val split is empty: no photos \(a split made here takes photos "
                                             r"only from classes with 2 or more\)"):
        train(tmp_path / "cat", out=str(tmp_path / "run"), progress=False, **TINY)


def test_a_refused_retrain_resume_names_the_retrain_command(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    """It advised `skulens train --config RUN/config.yaml --resume`, which does not know the --extra photos
    (nor the enrolled ones): that command was then refused as 'the catalogue changed'."""
    from skulens.config import config_to_dict
    from skulens.train.checkpoint import save_checkpoint
    from skulens.train.retrain import retrain

    out = tmp_path / "rt"
    other = config_to_dict(resolve_config({**TINY, "data": str(tiny_catalogue), "out": str(out), "lr": 0.5}))
    save_checkpoint(out / "checkpoint", {"config": other, "model": {}, "state": {}})
    with pytest.raises(ConfigError, match="different config") as refused:
        retrain(tiny_bundle.bundle, out=str(out), extra=[str(tiny_catalogue)], resume=True, progress=False)
    said = str(refused.value)
    assert f"resume it as it was: skulens retrain --model {tiny_bundle.bundle} --extra" in said
    assert f"--out {out} --resume" in said


def test_resume_checks_after_the_second_diff_review(tiny_catalogue: Path, tmp_path: Path) -> None:
    """An older checkpoint's digest (no new keys) resumed as 'the catalogue changed'; the same photos with other
    coarse labels or attributes passed with --data NEW and crashed in load_state_dict; a zero-label round and a
    user's folder named round* misled the pseudo-label message; a round-K stage's teacher (a sibling) moved with
    its run was 'a different config'."""
    from skulens.data.catalogue import load_catalogue
    from skulens.train.checkpoint import config_changes
    from skulens.train.engine import _check_same_photos, _photos_digest

    digest = _photos_digest(load_catalogue(tiny_catalogue))
    old = {k: digest[k] for k in ("classes", "photos")}
    _check_same_photos(tmp_path, old, digest)  # an older skulens's checkpoint: compared on the keys it has
    with pytest.raises(ConfigError, match="coarse classes or attributes changed"):
        _check_same_photos(tmp_path, {**digest, "taught": "0" * 16}, digest)
    with pytest.raises(ConfigError, match="had no pseudo-labelled photos, and this one has") as refused:
        _check_same_photos(tmp_path / "round2-st", {**digest, "pseudo_labelled": False},
                           {**digest, "pseudo_labelled": True})
    assert str(tmp_path / "self-training.yaml") in str(refused.value)
    a, b = tmp_path / "a", tmp_path / "b"
    assert not config_changes({"out": str(a / "round-2"), "teacher": str(a / "round-1" / "bundle")},
                              {"out": str(b / "round-2"), "teacher": str(b / "round-1" / "bundle")})


def test_catalogue_checks_read_photos_named_through_a_linked_roots_real_path(tmp_path: Path, caplog) -> None:
    from PIL import Image

    from skulens.data.catalogue import CatalogueError, load_catalogue

    real = tmp_path / "real"
    for label in ("Milk", "Bread"):
        (real / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (9 * i, 1, 2)).save(real / label / f"{i}.jpg")
    (real / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(real / "cat" / "m.jpg")
    (real / "products.csv").write_text(f"label,title,image\nMilk,Milk,{real / 'cat' / 'm.jpg'}\n")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(CatalogueError, match="folder 'cat' holds only catalogue photos"):
        load_catalogue(tmp_path / "link", val_fraction=0)  # it became a class through the link
    (real / "cat" / "m.jpg").unlink()
    (real / "cat").rmdir()
    (real / "products.csv").unlink()
    rows = [f"{real / label / f'{i}.jpg'},{label}" for label in ("Milk", "Bread") for i in range(3)]
    (real / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        load_catalogue(tmp_path / "link", val_fraction=0)
    assert "not in its manifest" not in caplog.text  # every photo is listed, through the real path
