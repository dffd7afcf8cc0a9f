"""Tests for skulens.train.checkpoint: lossless round-trips, crash safety, and no pickle on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from skulens.train.checkpoint import load_checkpoint, save_checkpoint


def _state(scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "config": {"lr": 1e-3 * scale, "loggers": ["tensorboard"], "max_steps": None, "ema": True, "name": "x"},
        "model": {"w": torch.randn(3, 4, generator=g) * scale, "n": torch.tensor(7, dtype=torch.long)},
        # An optimizer state dict: int keys, nested tensors, a list of param groups.
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(5, generator=g)},
                                11: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2, dtype=torch.float16)}},
                      "param_groups": [{"lr": 0.5, "params": [0, 11], "betas": (0.9, 0.999)}]},
        "state": {"epoch": 2, "best": 0.75, "best_epoch": 1, "history": [{"epoch": 1, "selected": None,
                                                                          "val_top1": 0.5}]},
    }


def _assert_equal(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)  # same keys, same types (0 stays int), same order
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        # JSON has no tuples: they come back as lists, which torch's load_state_dict accepts.
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    else:
        assert type(a) is type(b) and a == b


def test_round_trip_keeps_values_and_key_types(tmp_path: Path) -> None:
    state = _state()
    save_checkpoint(tmp_path / "checkpoint", state)
    loaded = load_checkpoint(tmp_path / "checkpoint")
    _assert_equal(state, loaded)
    assert set(loaded["optimizer"]["state"]) == {0, 11}


def test_real_optimizer_state_restores(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", {"opt": opt.state_dict()})
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(load_checkpoint(tmp_path / "ck")["opt"])
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_overwrite_replaces_and_leaves_no_side_dirs(tmp_path: Path) -> None:
    d = tmp_path / "checkpoint"
    save_checkpoint(d, _state(1.0))
    save_checkpoint(d, _state(2.0))
    assert load_checkpoint(d)["config"]["lr"] == pytest.approx(2e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "checkpoint") is None


def test_leftover_tmp_dir_is_ignored(tmp_path: Path) -> None:
    d = tmp_path / "checkpoint"
    save_checkpoint(d, _state(1.0))
    # A kill while writing the next checkpoint: a half-written temp dir beside the complete one.
    tmp = tmp_path / "checkpoint.tmp"
    tmp.mkdir()
    (tmp / "state.json").write_text('{"__dict__": [["config", ', encoding="utf-8")
    assert load_checkpoint(d)["config"]["lr"] == pytest.approx(1e-3)
    save_checkpoint(d, _state(3.0))  # the next save clears it
    assert load_checkpoint(d)["config"]["lr"] == pytest.approx(3e-3)
    assert not tmp.exists()


def test_interrupted_swap_falls_back_to_old(tmp_path: Path) -> None:
    d = tmp_path / "checkpoint"
    save_checkpoint(d, _state(1.0))
    # A kill between the two renames: only `.old` holds a complete checkpoint.
    d.rename(tmp_path / "checkpoint.old")
    loaded = load_checkpoint(d)
    _assert_equal(_state(1.0), loaded)
    save_checkpoint(d, _state(2.0))
    assert load_checkpoint(d)["config"]["lr"] == pytest.approx(2e-3)
    assert not (tmp_path / "checkpoint.old").exists()


def test_incomplete_dir_with_old_present_uses_old(tmp_path: Path) -> None:
    d = tmp_path / "checkpoint"
    save_checkpoint(d, _state(1.0))
    shutil.copytree(d, tmp_path / "checkpoint.old")
    (d / "state.safetensors").unlink()
    assert load_checkpoint(d)["config"]["lr"] == pytest.approx(1e-3)


def test_files_are_safetensors_and_json(tmp_path: Path) -> None:
    d = tmp_path / "checkpoint"
    save_checkpoint(d, _state())
    assert sorted(p.name for p in d.iterdir()) == ["state.json", "state.safetensors"]
    meta = json.loads((d / "state.json").read_text(encoding="utf-8"))
    assert isinstance(meta, dict)
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".pickle")]
    from safetensors.torch import load_file

    tensors = load_file(str(d / "state.safetensors"))
    assert len(tensors) == 6  # w, n, two steps, two exp_avg


def test_unsupported_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="set"):
        save_checkpoint(tmp_path / "checkpoint", {"bad": {1, 2}})
