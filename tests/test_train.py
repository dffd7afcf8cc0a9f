"""Tests for the fine-tuning engine (skulens.train): real Lite0 weights on tiny synthetic catalogues.

Runs are kept to a few optimizer steps at 64 px; the one longer fine-tune is conftest's `tiny_bundle`.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import skulens
from conftest import TINY, grocery_path, interrupt_after_checkpoint, write_catalogue
from skulens.api import train
from skulens.config import ConfigError, config_to_dict, resolve_config
from skulens.models.backbones import WeightsError, create_backbone
from skulens.models.classifier import SkuModel
from skulens.train.checkpoint import load_checkpoint, save_checkpoint
from skulens.train.freeze import apply_freeze, train_mode

STEM = "backbone.body.conv_stem.weight"
LATE = "backbone.body.blocks.6.0.conv_pw.weight"
HEAD = "backbone.body.conv_head.weight"


def _smoke(data: Path, out: Path, **overrides: object):
    """A 2-step, 1-epoch run with the tiny settings."""
    cfg = {**TINY, "epochs": 1, "max_steps": 2, **overrides}
    return train(data, out=str(out), progress=False, **cfg)


def _bundle_weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.bundle / "model.safetensors"))


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    """The bundled Lite0 ImageNet weights, keyed as they appear in a bundle."""
    return {f"backbone.{k}": v for k, v in create_backbone("efficientnet_lite0").state_dict().items()}


@pytest.fixture()
def lite0_model() -> SkuModel:
    torch.manual_seed(0)
    return SkuModel(create_backbone("efficientnet_lite0", image_size=64), 3, 2, 4, 0.2)


def test_skulens_train_stays_callable() -> None:
    import skulens.train.engine

    with pytest.raises(ConfigError, match="not_a_key"):
        skulens.train(not_a_key=1)


# --- the tiny fine-tune and everything it writes ---------------------------------------------------


def test_tiny_run_learns(tiny_bundle) -> None:
    r = tiny_bundle
    assert r.report.top1 >= 0.8, r.history
    assert r.epochs_run == 4
    assert 1 <= r.best_epoch <= 4
    assert r.skipped == ()
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]
    best = max(h["val_top1"] for h in r.history)
    assert r.history[r.best_epoch - 1]["val_top1"] == best  # selection follows the monitored metric


def test_card_describes_the_run(tiny_bundle, tiny_catalogue: Path) -> None:
    card = tiny_bundle.card
    assert card.classes == ("green-apple", "oat-milk", "red-apple")
    assert card.coarse_classes == ("Apple", "Milk")
    assert [card.coarse_classes[i] for i in card.fine_to_coarse] == ["Apple", "Milk", "Apple"]
    assert set(card.attributes) >= {"lactose_free"} and len(card.attributes) >= 2
    assert len(card.attribute_thresholds) == len(card.attributes)
    assert all(0.0 <= t <= 1.0 for t in card.attribute_thresholds)
    assert card.backbone == "efficientnet_lite0" and card.input_size == 64
    assert card.mean == card.std == (0.5, 0.5, 0.5)
    assert card.train_config["lr"] == pytest.approx(3e-3) and card.train_config["epochs"] == 4
    assert card.train_config["data"] == str(tiny_catalogue)
    assert len(card.dataset["fingerprint"]) == 16
    assert card.dataset["sizes"] == {"train": 24, "val": 9}
    assert card.metrics["top1"] == pytest.approx(tiny_bundle.report.top1)
    assert card.metrics["best_epoch"] == tiny_bundle.best_epoch
    # The card on disk is the same card.
    on_disk = json.loads((tiny_bundle.bundle / "card.json").read_text(encoding="utf-8"))
    assert on_disk["classes"] == list(card.classes) and on_disk["metrics"]["top1"] == pytest.approx(card.metrics["top1"])


def test_run_dir_layout(tiny_bundle) -> None:
    run = tiny_bundle.run_dir
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["lr"] == pytest.approx(3e-3) and cfg["image_size"] == 64 and cfg["loggers"] == []
    assert resolve_config(cfg).epochs == 4  # the resolved config is itself a valid config
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    assert [x["step"] for x in lines] == [3, 6, 9, 12]  # 24 train images / batch 8
    report = json.loads((run / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["summary"]["top1"] == pytest.approx(tiny_bundle.report.top1)
    assert (run / "report" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tiny_bundle.bundle == run / "bundle"
    assert sorted(p.name for p in tiny_bundle.bundle.iterdir()) == ["card.json", "model.safetensors"]
    assert not (run / "checkpoint").exists()
    assert not (run / "skipped_images.tsv").exists()


def test_bundle_predicts_val_images(tiny_bundle, tiny_catalogue: Path) -> None:
    model = skulens.load(tiny_bundle.bundle, device="cpu")
    files = sorted(glob.glob(str(tiny_catalogue.parent / "val" / "*" / "*.jpg")))
    preds = model.predict(files)
    truth = [Path(f).parent.name for f in files]
    accuracy = np.mean([p.fine_label == t for p, t in zip(preds, truth, strict=True)])
    assert accuracy == pytest.approx(tiny_bundle.report.top1, abs=1e-6)


# --- freezing --------------------------------------------------------------------------------------


def test_freeze_head_keeps_the_backbone(tiny_catalogue: Path, tmp_path: Path, pretrained) -> None:
    r = _smoke(tiny_catalogue, tmp_path / "head", freeze="head")
    w = _bundle_weights(r)
    changed = [k for k in pretrained if not torch.equal(w[k], pretrained[k])]
    assert changed == []  # weights and BatchNorm running statistics alike
    # The heads trained: compare with the same seeded initialisation the engine made.
    torch.manual_seed(0)
    init = SkuModel(create_backbone("efficientnet_lite0", image_size=64), 3, len(r.card.coarse_classes),
                    len(r.card.attributes), 0.2).state_dict()
    for k in ("head.weight", "coarse_head.weight", "attribute_head.weight"):
        diff = (w[k] - init[k]).abs().max().item()
        assert 0 < diff < 5e-3, (k, diff)  # moved a little: a few small steps from the same start


def test_freeze_partial_trains_only_late_stages(tiny_catalogue: Path, tmp_path: Path, pretrained) -> None:
    w = _bundle_weights(_smoke(tiny_catalogue, tmp_path / "partial", freeze="partial", trainable_stages=2))
    assert torch.equal(w[STEM], pretrained[STEM])
    assert torch.equal(w["backbone.body.blocks.5.0.conv_pw.weight"], pretrained["backbone.body.blocks.5.0.conv_pw.weight"])
    assert torch.equal(w["backbone.body.bn1.running_mean"], pretrained["backbone.body.bn1.running_mean"])
    assert not torch.equal(w[LATE], pretrained[LATE])
    assert not torch.equal(w[HEAD], pretrained[HEAD])


def test_freeze_full_trains_the_stem(tiny_catalogue: Path, tmp_path: Path, pretrained) -> None:
    w = _bundle_weights(_smoke(tiny_catalogue, tmp_path / "full", freeze="full"))
    assert not torch.equal(w[STEM], pretrained[STEM])
    assert not torch.equal(w[LATE], pretrained[LATE])


def _grad_flags(model: SkuModel) -> tuple[set[bool], set[bool]]:
    backbone = {p.requires_grad for p in model.backbone.parameters()}
    heads = {p.requires_grad for h in model.heads() for p in h.parameters()}
    return backbone, heads


def test_apply_freeze_flags(lite0_model: SkuModel) -> None:
    m = lite0_model
    stages = m.backbone.stages()
    assert len(stages) == 9  # stem, 7 blocks, head conv: what trainable_stages counts
    assert sum(p.numel() for s in stages for p in s.parameters()) == sum(p.numel() for p in m.backbone.parameters())

    frozen = apply_freeze(m, "gradual", head_only=True)
    assert _grad_flags(m) == ({False}, {True}) and len(frozen) == 9
    frozen = apply_freeze(m, "gradual", head_only=False)
    assert _grad_flags(m) == ({True}, {True}) and frozen == []
    apply_freeze(m, "head")
    assert _grad_flags(m) == ({False}, {True})
    apply_freeze(m, "full")
    assert _grad_flags(m) == ({True}, {True})

    frozen = apply_freeze(m, "partial", 2)
    assert len(frozen) == 7
    assert not m.backbone.body.conv_stem.weight.requires_grad
    assert not m.backbone.body.blocks[5][0].conv_pw.weight.requires_grad
    assert m.backbone.body.blocks[6][0].conv_pw.weight.requires_grad
    assert m.backbone.body.conv_head.weight.requires_grad
    assert len(apply_freeze(m, "partial", 0)) == 9 and len(apply_freeze(m, "partial", 99)) == 0
    with pytest.raises(ValueError, match="bogus"):
        apply_freeze(m, "bogus")


def test_train_mode_keeps_frozen_batchnorm_stats(lite0_model: SkuModel) -> None:
    m = lite0_model
    frozen = apply_freeze(m, "partial", 2)
    body = m.backbone.body
    before = {n: b.clone() for n, b in m.named_buffers() if "running_mean" in n}
    train_mode(m, frozen)
    assert m.training and m.head.training and m.dropout.training
    assert not body.bn1.training and not body.blocks[0].training
    assert body.blocks[6].training and body.bn2.training
    with torch.no_grad():
        m(torch.randn(4, 3, 64, 64))
    after = dict(m.named_buffers())
    assert torch.equal(after["backbone.body.bn1.running_mean"], before["backbone.body.bn1.running_mean"])
    assert torch.equal(after["backbone.body.blocks.5.0.bn1.running_mean"],
                       before["backbone.body.blocks.5.0.bn1.running_mean"])
    assert not torch.equal(after["backbone.body.bn2.running_mean"], before["backbone.body.bn2.running_mean"])


def test_batch_norm_frozen_keeps_every_statistic_while_the_weights_train(tiny_catalogue: Path, tmp_path: Path,
                                                                         pretrained, lite0_model: SkuModel) -> None:
    m = lite0_model
    train_mode(m, apply_freeze(m, "full"), batch_norm="frozen")
    norms = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(x.training for x in norms)
    assert m.training and m.dropout.training and m.backbone.body.blocks[6][0].conv_pw.training

    stats = [k for k in pretrained if k.endswith(("running_mean", "running_var"))]
    frozen = _bundle_weights(_smoke(tiny_catalogue, tmp_path / "frozen", freeze="full", batch_norm="frozen"))
    trained = _bundle_weights(_smoke(tiny_catalogue, tmp_path / "train", freeze="full"))
    assert [k for k in stats if not torch.equal(frozen[k], pretrained[k])] == []
    assert not torch.equal(frozen[STEM], pretrained[STEM]) and not torch.equal(frozen[LATE], pretrained[LATE])
    scales = [k.replace("running_mean", "weight") for k in stats if k.endswith("running_mean")]
    assert any(not torch.equal(frozen[k], pretrained[k]) for k in scales)  # BatchNorm's scale still trains
    assert sum(not torch.equal(trained[k], pretrained[k]) for k in stats) > len(stats) // 2  # the default moves them


# --- optimiser options, early stopping ------------------------------------------------------------


def test_sgd_onecycle_and_loss_options(tiny_catalogue: Path, tmp_path: Path) -> None:
    # 3 steps: see test_onecycle_schedules_of_any_length for the 2-step case.
    r = _smoke(tiny_catalogue, tmp_path / "opts", optimizer="sgd", schedule="onecycle", class_weights="balanced",
               label_smoothing=0.2, dropout=0.3, max_steps=3)
    assert r.epochs_run == 1 and len(r.history) == 1
    assert json.loads((r.run_dir / "metrics.jsonl").read_text(encoding="utf-8"))["step"] == 3
    assert np.isfinite(r.history[0]["train_loss"])
    cfg = yaml.safe_load((r.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert (cfg["optimizer"], cfg["schedule"], cfg["class_weights"]) == ("sgd", "onecycle", "balanced")
    assert cfg["label_smoothing"] == pytest.approx(0.2) and cfg["dropout"] == pytest.approx(0.3)
    assert r.card.dropout == pytest.approx(0.3) and r.card.train_config["optimizer"] == "sgd"


class _TwoGroups(torch.nn.Module):
    """The two parts make_optimizer gives their own learning rates: backbone and heads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 2)

    def heads(self) -> list[torch.nn.Module]:
        return [self.head]


@pytest.mark.parametrize(("optimizer", "schedule", "epochs", "total"), [
    ("sgd", "onecycle", 1, 3),
    ("adamw", "onecycle", 7, 70),
    ("sgd", "cosine", 1, 2),
    ("adamw", "constant", 3, 9),
    ("sgd", "onecycle", 1, 2),  # `--max-steps 2 --epochs 1`
    ("adamw", "onecycle", 10, 10),  # 10 epochs of one step
])
def test_onecycle_schedules_of_any_length(optimizer: str, schedule: str, epochs: int, total: int) -> None:
    from skulens.train.optim import make_optimizer

    cfg = resolve_config({"optimizer": optimizer, "schedule": schedule, "epochs": epochs, "lr": 0.1})
    model = _TwoGroups()
    opt, sched = make_optimizer(cfg, model, total)
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)
    head_lrs = []
    for _ in range(total):
        head_lrs.append(opt.param_groups[1]["lr"])
        assert opt.param_groups[0]["lr"] == pytest.approx(head_lrs[-1] * cfg.backbone_lr_mult)
        opt.step()
        sched.step()
    assert all(0 < lr <= 0.1 * (1 + 1e-6) for lr in head_lrs)
    if total >= 50:
        assert max(head_lrs) == pytest.approx(0.1, rel=0.05)  # the schedule reaches its peak


def test_the_logged_lr_is_the_rate_the_epochs_last_step_ran_at(tiny_catalogue: Path, tmp_path: Path) -> None:
    """metrics.jsonl logged the scheduler's next rate: past a one-cycle's end, 9.6e-05 for a run whose last step
    ran at ~0 (the cosine climbs back after the cycle)."""
    from skulens.train import engine

    seen: list[float] = []
    real = engine._train_step

    def spy(run, *args, **kwargs):  # the rate each step runs at, read before the step
        seen.append(float(run.opt.param_groups[-1]["lr"]))
        return real(run, *args, **kwargs)

    engine._train_step = spy
    try:
        r = train(tiny_catalogue, out=str(tmp_path / "oc"), progress=False,
                  **{**TINY, "epochs": 2, "schedule": "onecycle", "lr": 1e-3, "freeze": "head"})
    finally:
        engine._train_step = real
    lines = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    per_epoch = len(seen) // 2
    assert [x["lr"] for x in lines] == pytest.approx([seen[per_epoch - 1], seen[-1]])
    assert lines[-1]["lr"] < 1e-6


def test_balanced_class_weights() -> None:
    from skulens.train.engine import _class_weights

    w = _class_weights(resolve_config({"class_weights": "balanced"}), torch.tensor([0, 0, 1, 2]), 3)
    assert torch.allclose(w, torch.tensor([2 / 3, 4 / 3, 4 / 3]))
    assert _class_weights(resolve_config(), torch.tensor([0, 1]), 2) is None


def test_early_stopping(tiny_catalogue: Path, tmp_path: Path) -> None:
    # Frozen backbone and an LR of 1e-9: val accuracy cannot improve after epoch 1.
    cfg = {**TINY, "epochs": 6, "patience": 1, "lr": 1e-9, "freeze": "head"}
    r = train(tiny_catalogue, out=str(tmp_path / "es"), progress=False, **cfg)
    assert r.epochs_run == 2
    assert [h["epoch"] for h in r.history] == [1, 2]
    assert r.best_epoch == 1
    assert r.history[0]["selected"] == "model" and r.history[1]["selected"] is None


def test_a_run_too_short_for_its_catalogue_says_how_many_epochs(tiny_catalogue: Path, tmp_path: Path, caplog) -> None:
    import logging

    from skulens.train.engine import FEW_STEPS

    with caplog.at_level(logging.WARNING, logger="skulens.train.engine"):
        train(tiny_catalogue, out=str(tmp_path / "short"), progress=False, **{**TINY, "epochs": 1})
    # 24 train photos at batch 8: 3 steps an epoch, 3 planned
    warned = [r.getMessage() for r in caplog.records if "optimizer steps planned" in r.getMessage()]
    assert warned == [(f"only 3 optimizer steps planned (24 photos, batch 8, 1 epochs): a catalogue this small is "
                      f"undertrained at this length; try --epochs {-(-FEW_STEPS // 3)} (early stopping ends it when "
                      "val stops improving)")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skulens.train.engine"):
        train(tiny_catalogue, out=str(tmp_path / "capped"), progress=False, **{**TINY, "epochs": 1, "max_steps": 2})
    assert not [r for r in caplog.records if "optimizer steps planned" in r.getMessage()]  # asked for on purpose

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skulens.train.engine"):  # a trained bundle's short fine-tune
        train(tiny_catalogue, out=str(tmp_path / "tune"), progress=False,
              **{**TINY, "epochs": 1, "init_from": str(tmp_path / "short" / "bundle")})
    assert not [r for r in caplog.records if "optimizer steps planned" in r.getMessage()]


# --- run directories and resuming -----------------------------------------------------------------


def test_existing_run_dir_needs_resume(tiny_bundle, tiny_catalogue: Path) -> None:
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_catalogue, out=str(tiny_bundle.run_dir), progress=False, **TINY)


def test_resume_with_a_different_config_is_refused(tiny_catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    old = resolve_config({**TINY, "data": str(tiny_catalogue), "out": str(out), "lr": 0.01})
    save_checkpoint(out / "checkpoint", {"config": config_to_dict(old), "model": {}, "state": {}})
    with pytest.raises(ConfigError, match="different config") as refused:
        train(tiny_catalogue, out=str(out), progress=False, resume=True, **{**TINY, "lr": 0.02})
    # it says what differs, and how to resume the run as it was
    assert "lr: 0.01 then, 0.02 now" in str(refused.value) and "--config" in str(refused.value)
    # the same data by another path, or another device or logger, is the same run
    from skulens.train.checkpoint import RESUME_FREE, config_changes

    assert not config_changes({"data": str(tiny_catalogue)}, {"data": str(tiny_catalogue.resolve())})
    assert config_changes({"data": str(tiny_catalogue), "lr": 0.01}, {"data": str(tmp_path), "lr": 0.02}) == ["data",
                                                                                                            "lr"]
    assert {"device", "loggers", "num_workers"} <= RESUME_FREE
    # a run folder moved after the kill: the checkpoint where it is now (the advised command started anew in the
    # old folder, and the moved checkpoint could never be resumed)
    assert not config_changes({"out": str(tmp_path / "a")}, {"out": str(tmp_path / "b")})
    # a self-training stage's teacher lies in the run folder: moved with it, it is the same teacher (the resume was
    # refused, advising the command that had just failed); a teacher elsewhere still counts
    a, b = tmp_path / "a", tmp_path / "b"
    assert not config_changes({"out": str(a), "teacher": str(a / "teacher" / "bundle")},
                              {"out": str(b), "teacher": str(b / "teacher" / "bundle")})
    assert config_changes({"out": str(a), "teacher": str(a / "teacher" / "bundle")},
                          {"out": str(b), "teacher": str(tmp_path / "t" / "bundle")}) == ["teacher"]


def test_resume_after_the_catalogue_changed_is_refused(tiny_catalogue: Path, tmp_path: Path) -> None:
    """A class added since the kill gave a 'size mismatch for head.weight' traceback; photos added, or a class
    renamed (same count: another class's head row), resumed without a word."""
    from skulens.data.catalogue import load_catalogue
    from skulens.train.engine import _photos_digest

    out = tmp_path / "run"
    cfg = config_to_dict(resolve_config({**TINY, "data": str(tiny_catalogue), "out": str(out)}))
    digest = _photos_digest(load_catalogue(tiny_catalogue))
    for data, what in (({**digest, "classes": [*digest["classes"][:-1], "yellow"]}, "classes changed .new: "),
                       ({**digest, "photos": "0" * 64}, "photos were added, removed, moved or relabelled")):
        save_checkpoint(out / "checkpoint", {"config": cfg, "model": {}, "state": {}, "data": data})
        with pytest.raises(ConfigError, match=f"the catalogue changed since the interrupted run: its {what}"
                           if "classes" in what else what):
            train(tiny_catalogue, out=str(out), progress=False, resume=True, **TINY)
    # a self-training stage killed mid-run and resumed through its own config.yaml: no pseudo-labelled photos,
    # and it finished on the labelled ones alone, unsaid
    save_checkpoint(out / "checkpoint", {"config": cfg, "model": {}, "state": {},
                                         "data": {**digest, "pseudo_labelled": True}})
    with pytest.raises(ConfigError, match=r"trained on pseudo-labelled photos.*--config .*self-training.yaml"):
        train(tiny_catalogue, out=str(out), progress=False, resume=True, **TINY)


def test_a_kill_between_the_first_bundle_and_the_first_checkpoint_can_be_resumed(tiny_bundle, tiny_catalogue: Path,
                                                                                   tmp_path: Path) -> None:
    """The bundle of a best epoch is saved before that epoch's checkpoint; a kill in between left a folder that
    --resume called finished ("its bundle is there and no checkpoint") and a new run called taken."""
    from skulens.train.checkpoint import run_finished

    out = tmp_path / "run"
    shutil.copytree(tiny_bundle.bundle, out / "bundle")
    card = json.loads((out / "bundle" / "card.json").read_text(encoding="utf-8"))
    assert run_finished(out)  # a finished run's card holds its best epoch
    card["metrics"] = {"split": "val", "epoch": 1, "weights": "model"}  # what the first best epoch writes
    (out / "bundle" / "card.json").write_text(json.dumps(card), encoding="utf-8")
    assert not run_finished(out)
    r = train(tiny_catalogue, out=str(out), progress=False, resume=True, **TINY)  # "no checkpoint": a new run
    assert r.card.metrics["best_epoch"] >= 1 and run_finished(out)


def test_an_unfinished_runs_bundle_says_so_where_it_loads(tiny_bundle, tmp_path: Path, caplog, capsys) -> None:
    """A killed run leaves RUN/bundle, written at its best epoch before calibration: it loaded, predicted and
    was distilled from as a finished model, without a word."""
    import logging

    import skulens
    from skulens.cli import main

    out = tmp_path / "run"
    shutil.copytree(tiny_bundle.bundle, out / "bundle")
    assert main(["info", "-m", str(out / "bundle")]) == 0 and "not finished" not in capsys.readouterr().err
    card = json.loads((out / "bundle" / "card.json").read_text(encoding="utf-8"))
    card["metrics"] = {"split": "val", "epoch": 2, "weights": "model"}  # what a best epoch writes
    (out / "bundle" / "card.json").write_text(json.dumps(card), encoding="utf-8")
    (out / "checkpoint").mkdir()  # the run's checkpoint: it was stopped (or still goes on)
    with caplog.at_level(logging.WARNING):
        skulens.load(out / "bundle", device="cpu")
    assert "has not finished (the best epoch so far, 2)" in caplog.text and "--resume" in caplog.text
    assert main(["info", "-m", str(out / "bundle")]) == 0
    assert "not finished" in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        skulens.load(tiny_bundle.bundle, device="cpu")  # a finished run's bundle: nothing to say
    assert "not finished" not in caplog.text
    # killed (or out of disk) after the first bundle save and before the first checkpoint: only config.yaml beside it
    (out / "checkpoint").rmdir()
    with caplog.at_level(logging.WARNING):
        skulens.load(out / "bundle", device="cpu")  # a copied bundle, no run around it: nothing to say
    assert "not finished" not in caplog.text
    (out / "config.yaml").write_text("epochs: 3\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        skulens.load(out / "bundle", device="cpu")
    assert "has not finished (the best epoch so far, 2)" in caplog.text


def test_an_unfinished_self_training_stage_advises_resuming_the_whole_run(tmp_path: Path) -> None:
    """`skulens info` on a running self-training student advised `--config OUT/config.yaml --resume`: a stage's
    own config, which self-training refuses to resume (it names OUT/self-training.yaml)."""
    from types import SimpleNamespace

    from skulens.models.card import unfinished_run_note

    card = SimpleNamespace(metrics={"split": "val", "epoch": 4})  # a best epoch's card, before calibration
    out = tmp_path / "semi"
    for stage in (out, out / "round-1", out / "teacher"):
        (stage / "bundle").mkdir(parents=True)
        (stage / "config.yaml").write_text("epochs: 3\n", encoding="utf-8")
    plain = unfinished_run_note(card, out / "bundle")  # no self-training.yaml: a plain run
    assert plain is not None and plain.endswith(f"--config {out / 'config.yaml'} --resume")
    (out / "self-training.yaml").write_text("unlabeled: photos\n", encoding="utf-8")
    for stage in (out, out / "round-1", out / "teacher"):
        note = unfinished_run_note(card, stage / "bundle")
        assert note is not None and note.endswith(f"--config {out / 'self-training.yaml'} --resume"), stage
    other = tmp_path / "semi" / "mine"  # a plain run saved inside a self-training run's folder is its own run
    (other / "bundle").mkdir(parents=True)
    (other / "config.yaml").write_text("epochs: 3\n", encoding="utf-8")
    assert unfinished_run_note(card, other / "bundle").endswith(f"--config {other / 'config.yaml'} --resume")


def _cli_train(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "skulens.cli", "train", "--data", str(manifest), "--out", str(out), "-q",
            "--backbone", "efficientnet_lite0", "--image-size", "64", "--train-image-size", "64",
            "--batch-size", "8", "--no-baseline", "--no-ema", "--loggers", "", "--epochs", "4", *extra]


def test_a_checkpoint_from_before_a_new_setting_resumes_as_that_settings_default() -> None:
    """A run interrupted before a config key existed recorded no value for it: that is the default's behaviour,
    not a changed config (its resume was refused, the advised command too)."""
    from skulens.train.checkpoint import config_changes

    now = config_to_dict(resolve_config({}))
    was = {k: v for k, v in now.items() if k not in ("head_init", "batch_norm")}
    assert config_changes(was, now) == []
    assert config_changes(was, {**now, "batch_norm": "frozen" if now["batch_norm"] == "train" else "train"}) == [
        "batch_norm"]


@pytest.mark.timeout(600)
def test_kill_and_resume(tiny_catalogue: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_catalogue.parent, tmp_path / "cat")  # moved before the resume, below
    tiny_catalogue = tmp_path / "cat" / tiny_catalogue.name
    out = tmp_path / "killed"
    state = out / "checkpoint" / "state.json"
    proc = subprocess.Popen(_cli_train(tiny_catalogue, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not state.is_file():
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert not (out / "report").exists()
    saved = load_checkpoint(out / "checkpoint")
    assert saved is not None and 1 <= saved["state"]["epoch"] < 4
    # The kill may land between the checkpoint and its log line: the resume below rewrites the log from it.
    log = out / "metrics.jsonl"  # created with the first line: absent when the kill beat it
    logged = len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0
    assert saved["state"]["epoch"] - 1 <= logged <= saved["state"]["epoch"]
    (out / "metrics.jsonl").write_text("", encoding="utf-8")  # force the lost-line case every time

    refused = subprocess.run(_cli_train(tiny_catalogue, out, "--resume", "--lr", "0.5"), capture_output=True,
                             text=True, timeout=300, check=False)
    assert refused.returncode == 2 and "different config" in refused.stderr

    # the folder moved after the kill: the advised `--config RUN/config.yaml --resume` resumes it where it is now
    # (its config.yaml names the old folder, where that command started a new run)
    moved = tmp_path / "moved"
    os.replace(out, moved)
    out = moved
    # and the catalogue moved too: the same photos by another path resume (the data path was a "different config",
    # and the advice named the same command again)
    os.replace(tmp_path / "cat", tmp_path / "cat2")
    tiny_catalogue = tmp_path / "cat2" / tiny_catalogue.name
    done = subprocess.run([sys.executable, "-m", "skulens.cli", "train", "--config", str(out / "config.yaml"),
                           "--data", str(tiny_catalogue), "--resume", "-q"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "resuming the run in" in done.stderr and not (tmp_path / "killed").exists()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    assert [x["step"] for x in lines] == [3, 6, 9, 12]  # the step count continued too
    import yaml

    # the folder and card record how the run trains, not how it was started: resume true there made a new run
    # from that config.yaml warn "no checkpoint to resume from"
    assert yaml.safe_load((out / "config.yaml").read_text())["resume"] is False
    assert json.loads((out / "bundle" / "card.json").read_text())["train_config"]["resume"] is False
    report = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in report["extra"]["history"]] == [1, 2, 3, 4]
    assert not (out / "checkpoint").exists()
    card = json.loads((out / "bundle" / "card.json").read_text(encoding="utf-8"))
    assert card["metrics"]["resumed"] is True
    # --resume on the finished run: refused, not a new run over its bundle, report and log
    before = (out / "metrics.jsonl").read_bytes(), (out / "bundle" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="this run finished"):
        skulens.train(tiny_catalogue, out=str(out), resume=True, progress=False)
    assert ((out / "metrics.jsonl").read_bytes(), (out / "bundle" / "model.safetensors").read_bytes()) == before

    model = skulens.load(out / "bundle", device="cpu")
    val = sorted(glob.glob(str(tiny_catalogue.parent / "val" / "*" / "*.jpg")))
    pred = model.predict(val[:1])[0]
    assert pred.level != "error" and pred.fine_label in model.classes
    assert 0.0 < pred.fine_confidence <= 1.0


@pytest.mark.timeout(300)
def test_ctrl_c_after_a_checkpoint_says_how_to_go_on(tiny_catalogue: Path, tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    code, err = interrupt_after_checkpoint(_cli_train(tiny_catalogue, out, "--epochs", "500", "--patience", "500"),
                                           out / "checkpoint")
    assert code == 130, err
    assert "interrupted in epoch" in err and "is kept: to go on from it, run skulens train --config " \
        f"{out / 'config.yaml'} --resume" in err, err
    assert load_checkpoint(out / "checkpoint") is not None


# --- bad data and weights -------------------------------------------------------------------------


def test_bad_training_images_are_skipped(tmp_path: Path) -> None:
    manifest = write_catalogue(tmp_path / "cat", n_train=4, n_val=2)
    train = tmp_path / "cat" / "train"
    not_image = train / "red-apple" / "red-apple_000.jpg"
    truncated = train / "green-apple" / "green-apple_001.jpg"
    empty = train / "oat-milk" / "oat-milk_002.jpg"
    not_image.write_bytes(b"not an image")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    empty.write_bytes(b"")
    r = _smoke(manifest, tmp_path / "run")
    bad = {str(p.resolve()) for p in (not_image, truncated, empty)}
    assert {str(Path(p).resolve()) for p, _ in r.skipped} == bad and len(r.skipped) == 3
    reasons = {str(Path(p).resolve()): why for p, why in r.skipped}
    assert "empty" in reasons[str(empty.resolve())]
    assert "not an image" in reasons[str(not_image.resolve())]
    rows = (r.run_dir / "skipped_images.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3
    assert {str(Path(row.split("\t")[0]).resolve()) for row in rows} == bad
    assert r.card.dataset["sizes"]["train"] == 12  # the catalogue lists them; training skipped them
    # 9 decodable images, batch 8, drop_last: one step.
    assert json.loads((r.run_dir / "metrics.jsonl").read_text(encoding="utf-8"))["step"] == 1


def test_unbundled_backbone_needs_weights() -> None:
    with pytest.raises(WeightsError, match="--weights"):
        create_backbone("timm:resnet18")


def test_random_weights_are_explicit() -> None:
    bb = create_backbone("timm:resnet18", weights="random").eval()
    assert bb.num_features == 512 and bb.spec.input_size == 224
    with torch.no_grad():
        assert bb(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("timm:resnet18", weights=tmp_path / "nope.safetensors")


def test_unknown_backbone_name() -> None:
    with pytest.raises(WeightsError, match="efficientnet_lite0"):
        create_backbone("resnet_9000")


# --- the Lite0 / Lite2 weight mapping against ImageNet on real photos ------------------------------


def _imagenet_class(name: str, path: Path, size: int) -> int:
    from PIL import Image

    net = create_backbone(name, keep_head=True).eval()
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        return int(net.body(x).argmax(1))


@pytest.mark.dataset
@pytest.mark.parametrize(("name", "size", "stem", "imagenet"), [
    ("efficientnet_lite0", 224, "Banana_001", 954),
    ("efficientnet_lite0", 224, "Granny-Smith_001", 948),
    ("efficientnet_lite0", 224, "Pineapple_001", 953),
    ("efficientnet_lite2", 260, "Banana_001", 954),
])
def test_pretrained_weights_map_to_imagenet(name: str, size: int, stem: str, imagenet: int) -> None:
    root = grocery_path()
    if root is None:
        pytest.skip("grocery-store dataset not found")
    found = glob.glob(str(root / "train" / "**" / f"{stem}.jpg"), recursive=True)
    assert len(found) == 1, found
    assert _imagenet_class(name, Path(found[0]), size) == imagenet


# --- honest selection: a hold-out of train ------------------------------------------------------------


def test_select_on_a_holdout_of_train_leaves_val_untouched(tiny_catalogue: Path, tmp_path: Path) -> None:
    import json

    from skulens.data.catalogue import _stratified_split, load_catalogue

    r = train(tiny_catalogue, out=str(tmp_path / "ho"), progress=False, select_on="holdout", holdout_fraction=0.25,
              **TINY)
    cat = load_catalogue(tiny_catalogue)
    _, held = _stratified_split(list(cat.split("train")), 0.25, seed=0)
    assert r.report.n == len(held) == 6  # selection (epochs, temperature, rules) saw only the hold-out: 2 a class
    assert r.card.metrics["split"] == "holdout" and r.card.metrics["selected_on"] == "holdout"
    val_report = json.loads((r.run_dir / "report-val" / "report.json").read_text())
    assert val_report["model"]["n"] == len(list(cat.split("val"))) == 9
    assert r.card.metrics["val"]["top1"] == val_report["model"]["top1"]
    lo, hi = val_report["model"]["top1_ci"]
    assert lo <= val_report["model"]["top1"] <= hi
    for key in ("top1_ci", "macro_f1_ci", "coarse_top1_ci"):  # the card holds all three, as the README says
        assert r.card.metrics["val"][key] == val_report["model"][key] and r.card.metrics[key] is not None
    assert "untouched" in (r.run_dir / "report-val" / "report.md").read_text()
    # the untouched val is scored as `skulens evaluate` scores it: the temperatures once (they were applied twice)
    again = skulens.evaluate(r.bundle, split="val", progress=False).to_dict()
    for key in ("nll", "ece", "top1"):
        assert val_report["model"][key] == pytest.approx(again[key], abs=1e-6), key
    assert "hold-out of train" in (r.run_dir / "report" / "report.md").read_text()
    # the epochs' numbers are the hold-out's, and named so (they were val_top1 ..., in the val report too)
    assert r.history and all("holdout_top1" in h and not any(k.startswith("val_") for k in h) for h in r.history)
    val_md = (r.run_dir / "report-val" / "report.md").read_text()
    assert "holdout_top1" not in val_md and "val_top1" not in val_md
    assert "optimistic" in (r.run_dir / "report" / "report.md").read_text() and "optimistic" not in val_md
    with pytest.raises(ConfigError, match="holdout_fraction"):
        train(tiny_catalogue, out=str(tmp_path / "bad"), progress=False, select_on="holdout", holdout_fraction=0.6,
              **TINY)


def test_a_run_folder_inside_its_catalogue_folder_and_a_one_class_catalogue_are_refused(tmp_path: Path) -> None:
    """A run saved inside a folder of class folders became a class ("runs", its report plots) of the next run;
    a catalogue of one class ended in a scikit-learn traceback (or, without the baseline, a one-answer model)."""
    from PIL import Image

    from skulens.data.catalogue import CatalogueError

    for label, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "flat" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), rgb).save(tmp_path / "flat" / label / f"{i}.jpg")
    with pytest.raises(ConfigError, match="inside the catalogue folder"):
        train(tmp_path / "flat", out=str(tmp_path / "flat" / "runs" / "v1"), progress=False, **TINY)
    assert not (tmp_path / "flat" / "runs").exists()
    # a manifest lists its photos: a run folder beside it is no photo of the next run
    rows = [f"{label}/{i}.jpg,{label}" for label in ("red", "blue") for i in range(4)]
    (tmp_path / "flat" / "manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    train(tmp_path / "flat" / "manifest.csv", out=str(tmp_path / "flat" / "runs" / "m"), progress=False,
          **{**TINY, "epochs": 1})
    shutil.rmtree(tmp_path / "flat" / "runs")
    (tmp_path / "flat" / "manifest.csv").unlink()
    shutil.rmtree(tmp_path / "flat" / "blue")
    with pytest.raises(CatalogueError, match="1 class .red.; a classifier needs at least 2"):
        train(tmp_path / "flat", out=str(tmp_path / "one"), progress=False, **TINY)


def test_evaluate_says_when_a_carved_out_val_is_carved_otherwise(tmp_path: Path, caplog) -> None:
    """Photos added to a catalogue whose val the run carved out of train: evaluate's val (the same seed) then held
    photos the model trained on, and scored them without a word."""
    import logging

    from PIL import Image

    rng = np.random.default_rng(0)
    for label, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "flat" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.clip(np.array(rgb) + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                            ).save(tmp_path / "flat" / label / f"{i}.png")
    r = train(tmp_path / "flat", out=str(tmp_path / "run"), progress=False, val_fraction=0.25, **TINY)
    assert r.card.dataset["val_generated"] and r.card.dataset["val_fingerprint"]
    with caplog.at_level(logging.WARNING, logger="skulens.evaluate.heldout"):
        skulens.evaluate(r.bundle, progress=False)
        assert "carved out of its train split now holds other photos" not in caplog.text
        for i in range(8, 12):
            Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp_path / "flat" / "red" / f"{i}.png")
        skulens.evaluate(r.bundle, progress=False)
    assert "carved out of its train split now holds other photos" in caplog.text


def test_a_second_run_into_an_out_another_process_is_writing_is_refused_at_once(tiny_catalogue, tmp_path) -> None:
    """Two `train` (or `retrain`) into one --out at once: both ran and said they succeeded, and the folder ended with
    one run's bundle, the other's config.yaml and both runs' epochs in metrics.jsonl (neither saw the other until
    a checkpoint existed). The run holds the folder's lock for its whole length."""
    import subprocess

    from skulens.config import ConfigError

    out = tmp_path / "run"
    holder = subprocess.Popen(  # another process's run: it holds the folder's lock
        [sys.executable, "-c", ("import sys, time\nfrom skulens.models.swap import lock_of\n"
                                f"lock = lock_of({str(out)!r}); lock.acquire(); print('held', flush=True); "
                                "time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another process is writing a run there now"):
            train(tiny_catalogue, out=str(out), progress=False, **{**TINY, "epochs": 1, "max_steps": 2})
        assert not (out / "metrics.jsonl").exists() and not (out / "config.yaml").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    r = train(tiny_catalogue, out=str(out), progress=False, **{**TINY, "epochs": 1, "max_steps": 2})  # free again
    assert r.bundle.is_dir()


def test_early_stopping_waits_patience_epochs(tiny_catalogue: Path, tmp_path: Path) -> None:
    """--patience 2: the run stops after the second epoch in a row without improvement, not before, not never."""
    cfg = {**TINY, "epochs": 6, "patience": 2, "lr": 1e-9, "freeze": "head"}  # val cannot improve after epoch 1
    r = train(tiny_catalogue, out=str(tmp_path / "es2"), progress=False, **cfg)
    assert r.epochs_run == 3 and r.best_epoch == 1
    assert [h["selected"] for h in r.history] == ["model", None, None]


def test_selection_follows_the_monitored_metric() -> None:
    """--monitor macro_f1 / coarse_top1 / robust_top1 decide which epoch (and model or EMA) is kept; top-1 and
    then the others only break ties."""
    from skulens.train.engine import _selection_key

    better_top1 = {"top1": 0.8, "coarse_top1": 0.9, "macro_f1": 0.5, "robust_top1": 0.6}
    better_f1 = {"top1": 0.7, "coarse_top1": 0.8, "macro_f1": 0.7, "robust_top1": 0.65}
    assert _selection_key(better_top1, "top1") > _selection_key(better_f1, "top1")
    assert _selection_key(better_f1, "macro_f1") > _selection_key(better_top1, "macro_f1")
    assert _selection_key(better_f1, "robust_top1") > _selection_key(better_top1, "robust_top1")
    tie = {**better_f1, "top1": 0.8}  # same top-1: coarse top-1 decides
    assert _selection_key(better_top1, "top1") > _selection_key(tie, "top1")


def test_head_init_probe_starts_where_the_linear_probe_ends(tiny_catalogue: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """LP-FT: with the backbone frozen and a learning rate too small to move anything, a probe-started run scores
    the baseline's linear probe on val, and a random-started one does not; --init-from with it is refused."""
    import skulens.evaluate.baseline as probes

    fits = []
    fit = probes._fit_probe

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        fits.append(1)
        return fit(*args, **kwargs)

    monkeypatch.setattr(probes, "_fit_probe", counted)
    runs = {}
    for init in ("probe", "random"):
        runs[init] = _smoke(tiny_catalogue, tmp_path / init, freeze="head", lr=1e-9, baseline=True, head_init=init)
        fits.append(init)
    # the probe run fits one probe per head (fine, coarse) and its baseline reuses the fine one; random fits one
    assert fits == [1, 1, "probe", 1, "random"]
    probe_top1 = runs["probe"].baseline.top1
    assert probe_top1 > 0.6  # a probe that learned something, so the comparison can tell the two apart
    assert runs["probe"].report.top1 == pytest.approx(probe_top1, abs=1 / 9)  # 9 val photos: one may flip
    assert runs["random"].report.top1 < probe_top1 - 0.2
    # the baseline of the probe-started run reuses that probe's fit; the random one fits it itself: one answer
    assert runs["random"].baseline.top1 == pytest.approx(probe_top1, abs=1e-9)
    assert runs["random"].baseline.macro_f1 == pytest.approx(runs["probe"].baseline.macro_f1, abs=1e-9)
    assert config_to_dict(resolve_config({"head_init": "probe"}))["head_init"] == "probe"
    with pytest.raises(ConfigError, match="head_init probe"):
        resolve_config({"head_init": "probe", "init_from": str(runs["probe"].bundle)})
    from skulens.train.retrain import retrain

    # a retrain of a probe-started bundle starts from that bundle's heads: its recorded head_init is not carried
    again = retrain(runs["probe"].bundle, out=str(tmp_path / "again"), progress=False, max_steps=1)
    assert again.card.train_config["head_init"] == "random"
    from skulens.cli import main

    # the probe run's own config.yaml, given to retrain and prune: its head_init is left out
    recorded = str(tmp_path / "probe" / "config.yaml")
    assert main(["retrain", "-m", str(runs["probe"].bundle), "--config", recorded, "--out", str(tmp_path / "r2"),
                 "--max-steps", "1", "-q"]) == 0
    assert main(["prune", "-m", str(runs["probe"].bundle), "--config", recorded, "--out", str(tmp_path / "p2"),
                 "--kind", "unstructured", "--amount", "0.2", "--max-steps", "1", "-q"]) == 0
    for argv in (["retrain", "--out", str(tmp_path / "r3")], ["prune", "--out", str(tmp_path / "p3"), "--amount", "0.2"]):
        with pytest.raises(SystemExit) as stopped:  # not a flag of a run that starts from its bundle's heads
            main([*argv, "-m", str(runs["probe"].bundle), "--head-init", "probe"])
        assert stopped.value.code == 2 and not (tmp_path / "r3").exists() and not (tmp_path / "p3").exists()
