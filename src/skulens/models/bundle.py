"""Model bundles: a directory with model.safetensors and card.json. Loading never unpickles."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import Timeout
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbones import create_architecture
from .card import ModelCard, unfinished_run_note
from .classifier import SkuModel
from .pruned import apply_pruning
from .swap import CARD, WEIGHTS, lock_of, recover_bundle

__all__ = ["BundleBusyError", "BundleError", "atomic_save_tensors", "atomic_write_text", "build_model", "bundle_folder", "bundle_lock",
           "load_bundle", "make_readable", "read_card", "recover_bundle", "rewrites_bundle", "save_bundle",
           "save_tensors"]

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 900.0  # an enrolment's first run makes the catalogue views (about a minute for 60 products)

F = TypeVar("F", bound=Callable[..., Any])


class BundleError(RuntimeError):
    """A bundle directory is missing, incomplete or does not match its card."""


class BundleBusyError(BundleError):
    """Another process kept rewriting the bundle (held its lock) for longer than the wait allowed."""


def build_model(card: ModelCard) -> SkuModel:
    """The architecture a card describes (its weights are loaded separately, strictly)."""
    backbone = create_architecture(card.backbone, image_size=card.input_size)
    n_coarse = len(card.coarse_classes) if card.coarse_head else 0
    model = SkuModel(backbone, card.num_classes, n_coarse, len(card.attributes), card.dropout)
    return apply_pruning(model, card.pruning)  # a structurally pruned card lists its narrower layers


@contextmanager
def bundle_lock(directory: str | os.PathLike[str], timeout: float | None = None) -> Iterator[None]:
    """Hold the bundle's lock (:func:`swap.lock_of`) while rewriting it; a BundleBusyError after `timeout` s
    (default LOCK_TIMEOUT_S)."""
    lock = lock_of(directory)
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise BundleBusyError(f"{directory}: another process has been rewriting this bundle for {timeout:.0f} s "
                          f"(it holds {lock.lock_file}); try again when it is done") from None
    try:
        yield
    finally:
        lock.release()


def rewrites_bundle(fn: F) -> F:
    """For a function that reads a bundle, changes it and saves it in place (its first argument, a bundle or its
    card.json): the read and the save under the bundle's lock, so a change made by another process or thread
    in between is never overwritten."""
    @functools.wraps(fn)
    def run(bundle: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        folder = bundle_folder(bundle)  # --model may name its card.json: the folder is rewritten, never the file
        with bundle_lock(folder):
            return fn(folder, *args, **kwargs)
    return run  # type: ignore[return-value]


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _carry_over(old: Path, new: Path) -> None:
    """Files that live beside the weights (text alignment, enrolled photos) move into the new bundle;
    exports (model.onnx, model.int8.onnx, model.torchscript.pt) are dropped: they encode the old weights."""
    for item in old.iterdir():
        if item.name in (WEIGHTS, CARD) or item.name.startswith("model."):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, new / item.name)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str],
                 metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, the file then as readable as any other output (:func:`make_readable`). Its error
    for a failing disk ("No space left on device (os error 28)", a SafetensorError) is raised as the OSError it
    is, so a full disk is said as one (`skulens`: exit 3) wherever tensors are saved."""
    with safetensors_disk_errors(path):
        save_file(tensors, str(path), metadata=metadata)
    make_readable(path)


def _tmp_beside(path: Path) -> Path:
    """A temporary name beside `path` of this process and thread alone: two writers at once (two `align`s into one
    bundle) each rename a whole file of their own, never one the other is writing or has renamed away."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


ORPHAN_AGE_S = 3600.0  # a temporary this old whose writer has gone is an orphan (see _remove_orphans)


def _remove_orphans(path: Path) -> None:
    """Temporaries of `path` left by writers killed mid-write (SIGKILL runs no cleanup): each as large as the file,
    so repeated kills would pile them up beside an index or a bundle. One goes when its writer's process no longer
    exists on this machine and it is over an hour old (on a folder shared between machines a live writer elsewhere
    may carry a pid unknown here: it is not an hour into one write)."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)\.\d+\.tmp")
    try:
        found = [(p, int(m.group(1))) for p in path.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    except OSError:
        return
    for tmp, pid in found:
        if pid == os.getpid() or _process_exists(pid):
            continue
        try:
            if time.time() - tmp.lstat().st_mtime > ORPHAN_AGE_S:
                tmp.unlink()
                log.info("removed %s, left by a writer that was stopped mid-write", tmp)
        except OSError:
            pass


def _process_exists(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there, not ask about it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone's process, or not ours to ask: kept
    return True


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str],
                        metadata: dict[str, str] | None = None) -> Path:
    """`save_tensors` into a temporary beside `path`, synced, then swapped in: a kill or a full disk leaves the old
    file or the new one (a kill leaves its temporary too: the next save removes it, see `_remove_orphans`)."""
    path = Path(path)
    _remove_orphans(path)
    tmp = _tmp_beside(path)
    try:
        save_tensors(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def safetensors_disk_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """safetensors' error for a failing disk while writing `path` raised as the OSError it is."""
    try:
        yield
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from exc


def make_readable(path: str | os.PathLike[str]) -> None:
    """The file's mode as the umask gives any new file: safetensors writes 0600, so a bundle's card was readable
    to a service account and its weights were not."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask, read without changing it: os.umask sets it to read it, and for that moment a file
    another thread creates (the service writes while it enrols) would get mode 0666."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return _UMASK_AT_IMPORT


def _read_umask_once() -> int:
    umask = os.umask(0)  # at import: one thread, before any worker runs
    os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _read_umask_once()


def save_bundle(model: SkuModel, card: ModelCard, directory: str | os.PathLike[str], *,
                carry_over: bool = False) -> Path:
    """Write the bundle into a temp dir, then swap it in: a crash never leaves a half-written bundle.

    carry_over: keep the existing bundle's side files (used when updating a bundle in place, e.g. enrolment).
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():  # a bundle's card.json given as its folder: never swap a folder in there
        raise BundleError(f"{out}: a file, not a bundle folder: give the folder to write the bundle into")
    out.parent.mkdir(parents=True, exist_ok=True)
    with bundle_lock(out):
        return _save_bundle(model, card, out, carry_over)


def _save_bundle(model: SkuModel, card: ModelCard, out: Path, carry_over: bool) -> Path:
    recover_bundle(out)  # an interrupted earlier swap: its bundle is the one carried over and replaced
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a bundle is as readable as any other output
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_tensors(state, tmp / WEIGHTS, metadata={"format": "pt", "skulens_card_schema": str(card.schema)})
        (tmp / CARD).write_text(card.to_json(), encoding="utf-8")
        if carry_over and out.is_dir():
            _carry_over(out, tmp)
        for f in (tmp / WEIGHTS, tmp / CARD):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    except BaseException:  # a full disk, an interrupt: no half-written copy of the bundle stays beside it
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def bundle_folder(path: str | os.PathLike[str]) -> Path:
    """The bundle folder `path` names: the folder itself, or its card.json or model.safetensors (as --model
    accepts). Side files (fusion head, exports) are written into it, never over the file it was named by."""
    p = Path(path)
    if p.name in (CARD, WEIGHTS) and not p.is_dir():
        p = p.parent
    if not (p / CARD).is_file():
        recover_bundle(p)
    if not (p / CARD).is_file():
        backend = {".onnx": "onnx", ".tflite": "tflite"}.get(p.suffix.lower())
        hint = f" (an exported file: load it with backend={backend!r}, --backend {backend})" if backend else ""
        raise BundleError(f"{p}: not a skulens bundle (no {CARD}){hint}")
    return p


def read_card(directory: str | os.PathLike[str]) -> ModelCard:
    card_path = bundle_folder(directory) / CARD
    try:
        return ModelCard.from_dict(json.loads(card_path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as e:
        raise BundleError(f"{card_path}: invalid card: {e}") from None


def load_bundle(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[SkuModel, ModelCard]:
    try:
        return _read_bundle(directory, device)
    except _WeightsError as first:
        # A save swaps the whole folder under the bundle's lock: a reader between its card and its weights may
        # have read one of each. Read once more, after the save, before calling the bundle broken.
        folder = Path(directory)
        folder = folder.parent if folder.name in (CARD, WEIGHTS) and not folder.is_dir() else folder
        if not (folder / CARD).is_file():
            raise
        try:
            lock = lock_of(folder)
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except (OSError, Timeout):  # a read-only folder, or held for long: the first error is the answer
            raise first from None
        try:
            return _read_bundle(directory, device)
        finally:
            lock.release()


class _WeightsError(BundleError):
    """Weights missing, unreadable or not the card's: what a read between a save's card and weights meets."""


def _read_bundle(directory: str | os.PathLike[str], device: str | torch.device) -> tuple[SkuModel, ModelCard]:
    path = Path(directory)
    card = read_card(path)
    if path.is_file():
        path = path.parent
    weights = path / WEIGHTS
    if not weights.is_file():
        raise _WeightsError(f"{path}: missing {WEIGHTS}")
    model = build_model(card)
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as e:  # cut short by a full disk or a copy stopped half-way
        raise _WeightsError(f"{weights}: unreadable or incomplete ({e})") from None
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise _WeightsError(f"{weights} does not match its card: {k} has shape {tuple(state[k].shape)}, "
                            f"the card needs {tuple(expected[k].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise _WeightsError(
            f"{weights} does not match its card: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    note = unfinished_run_note(card, path)
    if note:
        log.warning("%s", note)
    return model.to(device).eval(), card
