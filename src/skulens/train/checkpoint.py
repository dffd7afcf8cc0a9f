"""Resumable training checkpoints without pickle: tensors in safetensors, everything else in JSON.

Nested state (optimizer, scheduler, history) is flattened: each tensor is stored under a path-like
key and replaced by {"__tensor__": key} in the JSON. Writes go to a temp dir that is fsynced and then
renamed, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..config import PATH_KEYS, ConfigError, TrainConfig, config_to_dict
from ..data.locate import card_json
from ..models.bundle import save_tensors

__all__ = ["RESUME_FREE", "check_same_run", "config_changes", "load_checkpoint", "refuse_resuming_a_finished_run",
           "resume_command", "run_finished", "run_started", "save_checkpoint"]


def _flatten(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # Items as pairs: optimizer state is keyed by int, which JSON objects would turn into str.
        return {"__dict__": [[k, _flatten(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {key}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten(state, "s", tensors)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_tensors(tensors, tmp / "state.safetensors")  # a full disk raised as the OSError it is
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    except BaseException:  # the last complete checkpoint stays the one to resume from; no half copy beside it
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The last complete checkpoint, or None. Falls back to `.old` if a swap was interrupted.

    `device`: where the tensors are loaded (torch.load's map_location). The CPU by default: under torchrun
    every rank reads the checkpoint, and load_state_dict then copies into each rank's own device.
    """
    for d in (directory, directory.with_name(directory.name + ".old")):
        if (d / "state.json").is_file() and (d / "state.safetensors").is_file():
            tensors = load_file(str(d / "state.safetensors"), device=str(device))
            return _unflatten(json.loads((d / "state.json").read_text(encoding="utf-8")), tensors)
    return None


def run_started(run_dir: str | os.PathLike[str]) -> bool:
    """A run is there: interrupted (its checkpoint) or finished (its bundle). A new run must not start over it."""
    return (Path(run_dir) / "checkpoint").exists() or (Path(run_dir) / "bundle").exists()


def resume_command(config_file: str | os.PathLike[str]) -> str:
    """The command that resumes the run `config_file` (a config.yaml a run wrote) describes, as it was."""
    return f"skulens train --config {config_file} --resume"


def run_finished(run_dir: str | os.PathLike[str]) -> bool:
    """A run that ended normally: its final bundle written (its card holds the run's `best_epoch`) and its
    checkpoint removed (the last step of a run). A bundle saved at a best epoch before the first checkpoint (a
    kill in between) is no finished run: such a folder was refused both as a new run and as a resumed one."""
    card = Path(run_dir) / "bundle" / "card.json"
    if not card.is_file() or (Path(run_dir) / "checkpoint").exists():
        return False
    data = card_json(card)
    return data is None or "best_epoch" in (data.get("metrics") or {})  # unreadable: not to be resumed over either


def refuse_resuming_a_finished_run(run_dir: str | os.PathLike[str]) -> None:
    """ConfigError for --resume of a run that finished: a new run would overwrite its bundle, report and log."""
    if run_finished(run_dir):
        raise ConfigError(f"{run_dir}: this run finished (its bundle is there and no checkpoint): nothing to "
                          "resume; choose another --out for a new run")


# What a resumed run may change without changing the run: where it runs and what it logs to, and the run folder's
# own path (a folder moved after the kill: the checkpoint is read from where it is now).
RESUME_FREE = frozenset({"device", "loggers", "num_workers", "out", "resume"})


def config_changes(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The config keys (outside RESUME_FREE) in which `now` differs from the interrupted run's `was`, sorted."""
    def inside(path: Any, out: Any) -> Path | None:  # `path` relative to the run folder `out`, if it lies in it
        if not out:
            return None
        root = Path(str(out))
        if re.fullmatch(r"round-\d+", root.name):  # a self-training round: its teacher is a sibling stage
            root = root.parent
        try:
            return Path(str(path)).relative_to(root)
        except ValueError:
            return None

    # a key the interrupted run's config lacks was added since, its default being how that run trained
    defaults = config_to_dict(TrainConfig())

    def differs(key: str) -> bool:
        a, b = was.get(key, defaults.get(key)), now.get(key)
        if key in PATH_KEYS and a and b:  # the same folder by another path
            ra, rb = inside(a, was.get("out")), inside(b, now.get("out"))
            if ra is not None and rb is not None:  # a place in the run folder, which may have moved since
                return ra != rb  # (a self-training stage's teacher, OUT/teacher/bundle)
            return Path(str(a)).resolve() != Path(str(b)).resolve()
        return a != b

    return sorted(k for k in set(was) | set(now) if k not in RESUME_FREE and differs(k))


def check_same_run(where: Path, was: dict[str, Any], now: dict[str, Any], advice: str) -> None:
    """ConfigError when --resume comes with another config than the interrupted run's (config_to_dict's), naming
    what differs and `advice`, the command that resumes the run as it was."""
    diff = config_changes(was, now)
    if diff:
        shown = ", ".join(f"{k}: {was.get(k)!r} then, {now.get(k)!r} now" for k in diff[:4])
        raise ConfigError(f"{where}: --resume with a different config than the interrupted run ({shown}"
                          f"{', ...' if len(diff) > 4 else ''}); resume it as it was: {advice}")
