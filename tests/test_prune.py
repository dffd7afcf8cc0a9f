"""Pruning: unstructured sparsity, structured channel removal, round-trips, recovery in the engine."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import skulens
from skulens.cli import main
from skulens.deploy.prune import n_params, prune_bundle, prune_model, sparsity
from skulens.models.bundle import load_bundle, save_bundle

needs_torch_pruning = pytest.mark.skipif(importlib.util.find_spec("torch_pruning") is None,
                                         reason="structured pruning needs: pip install 'skulens[prune]'")
# EMA stays on: its copy of the model must have the pruned widths too.
TINY_FLAGS = ["--image-size", "64", "--train-image-size", "64", "--epochs", "1", "--max-steps", "2",
              "--batch-size", "8", "--loggers", "", "-q"]


def _val(tiny_catalogue: Path) -> list[str]:
    return sorted(str(p) for p in tiny_catalogue.parent.rglob("val/*/*.jpg"))


def test_unstructured_reaches_the_requested_sparsity_and_round_trips(tiny_bundle, tmp_path: Path,
                                                                     tiny_catalogue: Path) -> None:
    res = prune_bundle(tiny_bundle.bundle, tmp_path / "p", kind="unstructured", amount=0.4)
    assert res.params_after == res.params_before  # unstructured: same shapes, zeros inside
    names = res.card.pruning["parameters"]
    assert len(names) > 40 and all(".conv" in n or "conv_" in n for n in names)
    net, card = load_bundle(res.bundle)
    assert sparsity(net, names) == pytest.approx(0.4, abs=0.002)
    params = dict(net.named_parameters())
    for n in names:  # every layer, not just the total, lost its smallest 40%
        assert (params[n] == 0).float().mean().item() == pytest.approx(0.4, abs=0.02)
    assert (params["head.weight"] != 0).all()  # the heads are not pruned
    assert card.pruning["kind"] == "unstructured" and card.metrics == {}  # old val metrics no longer hold
    assert card.lineage["pruned_from"]["bundle"] == str(tiny_bundle.bundle)
    preds = skulens.load(res.bundle).predict(_val(tiny_catalogue))
    assert all(p.level != "error" for p in preds)


@needs_torch_pruning
def test_structured_removes_channels_and_the_bundle_rebuilds(tiny_bundle, tmp_path: Path) -> None:
    net, card = load_bundle(tiny_bundle.bundle)
    x = torch.rand(3, 3, 64, 64)
    info = prune_model(net, kind="structured", amount=0.3, input_size=64)
    assert info["params_before"] == n_params(load_bundle(tiny_bundle.bundle)[0])
    assert n_params(net) == info["params_after"] < 0.75 * info["params_before"]
    widths = info["widths"]
    convs = [w for w in widths.values() if "out_channels" in w]
    assert len(convs) > 20
    dw = [w for w in convs if w["groups"] > 1]
    assert dw and all(w["groups"] == w["in_channels"] == w["out_channels"] for w in dw)  # still depthwise
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out["fine"].shape == (3, card.num_classes) and net.embedding_dim == card.embedding_dim
    path = save_bundle(net, card.with_(pruning=info), tmp_path / "pruned")
    again, _ = load_bundle(path)  # rebuilt from the card's widths, weights loaded strictly
    assert n_params(again) == info["params_after"]
    with torch.no_grad():
        out2 = again(x)
    for k in out:
        torch.testing.assert_close(out2[k], out[k], atol=1e-5, rtol=1e-5)


@needs_torch_pruning
def test_a_card_with_widths_that_do_not_fit_is_a_clear_error(tiny_bundle, tmp_path: Path) -> None:
    from skulens.models.bundle import BundleError

    res = prune_bundle(tiny_bundle.bundle, tmp_path / "p", kind="structured", amount=0.3)
    card = json.loads((res.bundle / "card.json").read_text())
    name = next(iter(card["pruning"]["widths"]))
    del card["pruning"]["widths"][name]
    (res.bundle / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="does not match its card"):
        load_bundle(res.bundle)


def test_bad_amount_and_kind_are_errors(tiny_bundle) -> None:
    net, _ = load_bundle(tiny_bundle.bundle)
    with pytest.raises(ValueError, match="amount"):
        prune_model(net, kind="unstructured", amount=1.0)
    with pytest.raises(ValueError, match="kind"):
        prune_model(net, kind="channels", amount=0.2)


@pytest.mark.parametrize("kind", ["unstructured", pytest.param("structured", marks=needs_torch_pruning)])
def test_prune_command_recovers_through_the_engine(kind: str, tiny_bundle, tiny_catalogue: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / kind
    rc = main(["prune", str(tiny_bundle.bundle), "--out", str(out), "--kind", kind, "--amount", "0.5",
               "--data", str(tiny_catalogue), *TINY_FLAGS])
    assert rc == 0
    pruned_card = json.loads((out / "pruned" / "card.json").read_text())
    net, card = load_bundle(out / "bundle")  # the recovered model: the pruned architecture, fine-tuned
    assert card.pruning == pruned_card["pruning"]
    assert card.train_config["init_from"] == str(out / "pruned") and card.train_config["freeze"] == "full"
    original = load_bundle(pruned_card["lineage"]["pruned_from"]["bundle"])[0]
    pruned = load_bundle(out / "pruned")[0]
    moved = [n for n, p in net.named_parameters() if not torch.equal(p, dict(pruned.named_parameters())[n])]
    assert moved  # the recovery really trained
    if kind == "unstructured":  # the zeros were held through the optimizer steps
        assert sparsity(net, card.pruning["parameters"]) >= 0.5 - 1e-3
    else:
        assert n_params(net) == card.pruning["params_after"] < n_params(original)
    assert isinstance(net.backbone.body.conv_stem, nn.Conv2d)
    preds = skulens.load(out / "bundle").predict(_val(tiny_catalogue))
    assert all(p.level != "error" for p in preds)


def test_prune_and_recover_recipe(tiny_bundle, tmp_path: Path) -> None:
    from skulens.config import ConfigError
    from skulens.deploy.prune import PruneRun, prune_and_recover

    out = tmp_path / "recipe"
    run = prune_and_recover(tiny_bundle.bundle, out, kind="unstructured", amount=0.5, progress=False,
                            image_size=64, train_image_size=64, epochs=1, max_steps=2, batch_size=8,
                            loggers="", ema=False)
    assert isinstance(run, PruneRun) and run.pruned.bundle == out / "pruned"
    rec = run.recovered
    assert rec is not None and rec.bundle == out / "bundle"
    assert rec.card.pruning == run.pruned.card.pruning and rec.card.pruning["kind"] == "unstructured"
    assert rec.card.lineage["pruned_from"]["bundle"] == str(tiny_bundle.bundle)
    cfg = rec.card.train_config  # RECOVERY_DEFAULTS under the overrides; the data is the bundle's own
    assert (cfg["freeze"], cfg["baseline"], cfg["warmup_epochs"], cfg["epochs"]) == ("full", False, 0.5, 1)
    assert cfg["init_from"] == str(out / "pruned") and cfg["data"] == tiny_bundle.card.dataset["path"]
    net, _ = load_bundle(rec.bundle)
    assert sparsity(net, rec.card.pruning["parameters"]) >= 0.5 - 1e-3
    with pytest.raises(ConfigError, match="already holds a run"):
        prune_and_recover(tiny_bundle.bundle, out, kind="unstructured", amount=0.5, recover=False)


def test_prune_without_recovery_and_bad_overrides(tiny_bundle, tmp_path: Path) -> None:
    from skulens.config import ConfigError
    from skulens.deploy.prune import prune_and_recover

    run = prune_and_recover(tiny_bundle.bundle, tmp_path / "a", kind="unstructured", amount=0.3, recover=False)
    assert run.recovered is None and (tmp_path / "a" / "pruned" / "card.json").is_file()
    assert not (tmp_path / "a" / "bundle").exists()
    # A bad recovery setting is refused before anything is written.
    with pytest.raises(ConfigError, match="lerning_rate"):
        prune_and_recover(tiny_bundle.bundle, tmp_path / "b", kind="unstructured", amount=0.3, lerning_rate=1)
    assert not (tmp_path / "b").exists()


def test_a_failed_recovery_can_be_rerun_and_an_interrupted_one_resumed(tiny_bundle, tmp_path: Path) -> None:
    """A recovery refused by fit (a monitor the catalogue lacks) left OUT/pruned, so the corrected command was
    refused as "already holds a run"; `--resume`, which prune takes, never resumed; an --out inside a folder
    catalogue wrote OUT/pruned there first (a class of every later run); --image-size was dropped unsaid."""
    from conftest import write_folder_catalogue
    from skulens.config import ConfigError
    from skulens.deploy.prune import prune_and_recover, prune_bundle

    tiny = {"image_size": 64, "train_image_size": 64, "epochs": 1, "max_steps": 2, "batch_size": 8, "loggers": "",
            "ema": False}
    out = tmp_path / "p"
    with pytest.raises(ConfigError, match="coarse_top1"):
        prune_and_recover(tiny_bundle.bundle, out, kind="unstructured", amount=0.3, progress=False,
                          monitor="coarse_top1", data=str(_folders(tmp_path, write_folder_catalogue)), **tiny)
    assert not (out / "pruned").exists()  # nothing of that run is left to block the corrected one
    # as if killed before the recovery's first checkpoint: OUT/pruned alone; --resume goes on from it
    first = prune_bundle(tiny_bundle.bundle, out / "pruned", kind="unstructured", amount=0.3)
    with pytest.raises(ConfigError, match="already holds a run"):
        prune_and_recover(tiny_bundle.bundle, out, kind="unstructured", amount=0.3, progress=False, **tiny)
    with pytest.raises(ConfigError, match="not unstructured with 0.5"):
        prune_and_recover(tiny_bundle.bundle, out, kind="unstructured", amount=0.5, progress=False, resume=True,
                          **tiny)
    other = shutil.copytree(tiny_bundle.bundle, tmp_path / "other")
    with pytest.raises(ConfigError, match="holds a pruned"):  # another --model: its card would have been used
        prune_and_recover(other, out, kind="unstructured", amount=0.3, progress=False, resume=True, **tiny)
    run = prune_and_recover(tiny_bundle.bundle, out, kind="unstructured", amount=0.3, progress=False, resume=True,
                            **tiny)
    assert run.pruned.card.pruning == first.card.pruning and run.recovered is not None
    assert (out / "bundle" / "card.json").is_file()
    with pytest.raises(ConfigError, match="keeps the image size"):
        prune_and_recover(tiny_bundle.bundle, tmp_path / "q", kind="unstructured", amount=0.3, progress=False,
                          **{**tiny, "image_size": 96})
    cat = _folders(tmp_path, write_folder_catalogue)
    before = sorted(p.name for p in cat.iterdir())
    with pytest.raises(ConfigError, match="inside the catalogue folder"):
        prune_and_recover(tiny_bundle.bundle, cat / "pruned-run", kind="unstructured", amount=0.3, data=str(cat),
                          progress=False, **tiny)
    assert sorted(p.name for p in cat.iterdir()) == before


def _folders(tmp_path: Path, write) -> Path:
    root = tmp_path / "folders"
    if not root.exists():
        root.mkdir()
        write(root, seed=5, per_class=4)
    return root


def test_the_recovery_keeps_the_bundles_split_and_refuses_what_it_would_ignore(tiny_bundle, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """The recovery carved its val with the defaults (10 %, seed 0), not the bundle's: with a bundle trained at
    seed 1 every recovery val photo was one the bundle trained on, and "before vs after pruning" compared two
    vals. --init-from was overwritten unsaid; a run killed before its first checkpoint was not offered --resume;
    under torchrun every process pruned into the same OUT/pruned."""
    from conftest import TINY, write_folder_catalogue
    from skulens.config import ConfigError
    from skulens.deploy.prune import prune_and_recover

    cat = _folders(tmp_path, write_folder_catalogue)
    source = skulens.train(cat, out=str(tmp_path / "seed1"), progress=False, seed=1, val_fraction=0.25,
                           **{**TINY, "epochs": 1})
    tiny = {"image_size": 64, "train_image_size": 64, "epochs": 1, "max_steps": 1, "batch_size": 8, "loggers": "",
            "ema": False}
    run = prune_and_recover(source.bundle, tmp_path / "p", kind="unstructured", amount=0.3, progress=False, **tiny)
    cfg = run.recovered.card.train_config
    assert (cfg["seed"], cfg["val_fraction"]) == (1, 0.25)
    with pytest.raises(ConfigError, match="already holds a run; choose another --out$"):  # finished: no --resume
        prune_and_recover(source.bundle, tmp_path / "p", kind="unstructured", amount=0.3, progress=False, **tiny)
    assert run.recovered.card.dataset["val_fingerprint"] == source.card.dataset["val_fingerprint"]
    with pytest.raises(ConfigError, match="init_from"):
        prune_and_recover(source.bundle, tmp_path / "q", kind="unstructured", amount=0.3, progress=False,
                          init_from=str(tiny_bundle.bundle), **tiny)
    prune_bundle(source.bundle, tmp_path / "k" / "pruned", kind="unstructured", amount=0.3)  # killed early
    with pytest.raises(ConfigError, match="or --resume"):
        prune_and_recover(source.bundle, tmp_path / "k", kind="unstructured", amount=0.3, progress=False, **tiny)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["prune", str(source.bundle), "--out", str(tmp_path / "ddp"), "--kind", "unstructured",
                 "--amount", "0.3", "--no-recover"]) == 2
    assert not (tmp_path / "ddp").exists()


@pytest.mark.timeout(300)
def test_ctrl_c_in_the_recovery_names_the_prune_command_that_resumes_it(tiny_bundle, tmp_path: Path) -> None:
    """The advice after Ctrl-C is prune's own --resume (a `train --config` would skip what prune adds)."""
    import sys

    from conftest import interrupt_after_checkpoint

    out = tmp_path / "p"
    code, err = interrupt_after_checkpoint(
        [sys.executable, "-m", "skulens.cli", "prune", "--model", str(tiny_bundle.bundle), "--out", str(out), "--kind",
         "unstructured", "--amount", "0.1234567", "-q", "--image-size", "64", "--train-image-size", "64",
         "--batch-size", "8", "--loggers", "", "--no-ema", "--epochs", "500", "--patience", "500"], out / "checkpoint")
    assert code == 130, err
    said = err.split("to go on from it, run ", 1)[-1].split(" (with the options", 1)[0]
    # the amount as given: rounded (0.123457) the advised --resume was refused as another amount
    assert said.startswith(f"skulens prune --model {tiny_bundle.bundle} --out {out} --kind unstructured --amount 0.1234567 ")
    assert said.endswith(" --resume"), err


def test_a_recovery_setting_with_no_effect_is_said(tiny_bundle, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """prune's recovery said nothing of settings it never uses (train, retrain and distill warn): `--weights random`
    logged a random start, then the recovery started from OUT/pruned."""
    from skulens.deploy.prune import _recovery_config

    with caplog.at_level("WARNING", logger="skulens"):
        cfg = _recovery_config(tiny_bundle.bundle, tmp_path, None, {"weights": "random", "holdout_fraction": 0.2})
    assert cfg.init_from == str(tmp_path / "pruned")
    assert "weights random is not used" in caplog.text and "holdout_fraction 0.2 is not used" in caplog.text
