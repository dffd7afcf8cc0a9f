"""Run loggers: metrics.jsonl always; W&B follows the user's own mode and project settings."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from skulens.train.loggers import RunLogger


class _FakeWandb(types.ModuleType):
    """Stands in for wandb, which is not installed here (`pip install 'skulens[wandb]'`)."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.init_kwargs: dict[str, Any] = {}
        self.logged: list[tuple[dict[str, float], int]] = []
        self.finished = False

    def init(self, **kwargs: Any) -> _FakeWandb:
        self.init_kwargs = kwargs
        return self

    def log(self, values: dict[str, float], step: int) -> None:
        self.logged.append((values, step))

    def finish(self) -> None:
        self.finished = True


@pytest.fixture()
def wandb(monkeypatch: pytest.MonkeyPatch) -> _FakeWandb:
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return fake


def test_wandb_is_offline_when_the_user_set_nothing(wandb: _FakeWandb, tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, ("wandb",), {"lr": 0.1})
    assert wandb.init_kwargs["mode"] == "offline" and wandb.init_kwargs["project"] is None
    assert wandb.init_kwargs["dir"] == str(tmp_path) and wandb.init_kwargs["config"] == {"lr": 0.1}
    logger.log(3, {"epoch": 1, "val_top1": 0.5, "selected": "model", "improved": True})
    logger.close()
    assert wandb.logged == [({"epoch": 1.0, "val_top1": 0.5}, 3)] and wandb.finished
    assert json.loads((tmp_path / "metrics.jsonl").read_text(encoding="utf-8"))["selected"] == "model"


def test_wandb_follows_the_users_mode_and_project(wandb: _FakeWandb, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_PROJECT", "shelf-models")
    RunLogger(tmp_path, ("wandb",), {}).close()
    assert (wandb.init_kwargs["mode"], wandb.init_kwargs["project"]) == ("online", "shelf-models")


def test_missing_wandb_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match=r"skulens\[wandb\]"):
        RunLogger(tmp_path, ("wandb",), {})
