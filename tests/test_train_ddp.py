"""Distributed training: `torchrun --nproc_per_node 2 -m skulens.cli train`, 2 CPU processes (gloo), for real.

One process in this test process, the same run as 2 torchrun processes at the same global batch (8: 4 per
process), and a 2-process run killed after its first checkpoint and resumed. Workers run with
OMP_NUM_THREADS=1 and no loader workers, so 2 processes fit the 2 cores of the test machine.

How close 2 processes come to 1, measured here (the test's config: partial freeze, AdamW, EMA, 24 train /
9 val photos, 2 epochs of 3 steps; augmentation and dropout off, as their random draws differ per process by
design; each process, and the reference, on one thread):
- The first steps agree to float rounding (epoch 1's three steps within 7e-6 relative, 3e-6 on average): the
  same global batches (the sampler shards the one-process order) and BatchNorm statistics of the global
  batch. With per-process BatchNorm (--no-sync-bn) step 1 is already 8 % off and epoch 1 4 %.
- Later steps drift apart by as much as one process drifts from itself when only its thread count
  changes (1 vs 2 threads, steps 4-6: up to 2e-3 relative; 1 vs 2 processes: up to 1e-3): AdamW's first
  steps and BatchNorm over 8 small images amplify rounding. Epoch 2 loss: 4e-5 relative apart; val top-1,
  coarse top-1, macro-F1 (model and EMA) equal at every epoch and in the final report; final attribute mAP
  0.692 vs 0.683. Final ECE (0.21-0.48 over 9 photos, after a temperature fit) moves as much between
  1-process runs with 1 and 2 threads, so it is not compared.
Tolerances, with a margin over that: epoch 1 loss 1e-4 relative, epoch 2 loss 2 %, accuracies one photo
in nine, macro-F1 0.25 (one photo moves it by up to ~0.2), attribute mAP 0.05.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from skulens.api import train
from skulens.config import ConfigError
from skulens.data.dataset import TensorImageDataset
from skulens.train import distributed
from skulens.train.checkpoint import load_checkpoint

# The default recipe's freeze (partial: the late stages and their BatchNorm train), EMA on, no random draws.
CFG: dict[str, Any] = {**TINY, "epochs": 2, "ema": True, "freeze": "partial", "augment": "none",
                       "dropout": 0.0, "num_workers": 0}
ONE_PHOTO = 1 / 9 + 1e-9  # val has 9 photos


def _flags(cfg: dict[str, Any]) -> list[str]:
    out = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else f"--no-{k.replace('_', '-')}")
        else:
            out.append(f"{flag}={v}")
    return out


def _torchrun(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "skulens.cli", "train", "--data", str(manifest), "--out", str(out), *_flags(CFG), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _history(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def one_process(tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory):
    """The 1-process run, in this process; records the training samples it visits, in order."""
    seen: list[int] = []
    get = TensorImageDataset.__getitem__

    def recording(self: TensorImageDataset, i: int):
        seen.append(int(i))
        return get(self, i)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): one source of rounding fewer
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(TensorImageDataset, "__getitem__", recording)
            result = train(tiny_catalogue, out=str(tmp_path_factory.mktemp("ddp") / "one"), progress=False,
                           **CFG)
    finally:
        torch.set_num_threads(threads)
    return result, seen


@pytest.fixture(scope="module")
def two_processes(tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same run as 2 torchrun processes (progress on: only rank 0 may print it)."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    # --holdout-fraction is unused here (it selects on val): a warning every process would give
    cmd = [c for c in _torchrun(tiny_catalogue, out, "--holdout-fraction=0.2") if c != "-q"]
    proc = subprocess.run(cmd, check=False, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return out, proc.stdout


# --- pieces, in this process ------------------------------------------------------------------------------


def test_single_process_order_is_the_engines(one_process) -> None:
    _, seen = one_process
    steps = 24 // 8  # drop_last: 3 full batches an epoch
    assert len(seen) == 2 * steps * 8
    for epoch in range(2):
        assert seen[epoch * 24:(epoch + 1) * 24] == distributed.single_process_order(24, epoch)


@pytest.mark.parametrize(("n", "batch", "world"), [(24, 8, 2), (25, 6, 3), (7, 8, 2)])
def test_sharded_batches_are_the_one_process_batches(n: int, batch: int, world: int) -> None:
    order = distributed.single_process_order(n, 5)
    local = distributed.local_batch_size(batch, world)
    drop_last = n > batch  # the engine's rule, in both paths
    shards = []
    for rank in range(world):
        s = distributed.ShardedSampler(list(range(n)), world, rank, seed=3)
        s.set_epoch(2)  # seed + epoch = 5
        shards.append([b.tolist() for b in torch.utils.data.DataLoader(list(range(n)), batch_size=local,
                                                                         sampler=s, drop_last=drop_last)])
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    full = [order[i:i + batch] for i in range(0, n, batch)]
    for k, step in enumerate(zip(*shards, strict=True)):
        together = sorted(i for part in step for i in part)
        if drop_last:
            assert together == sorted(full[k])
        else:  # one short batch: every rank the same share, the remainder (< world) left out
            assert set(together) <= set(order) and len(together) == world * (n // world)


def test_global_batch_must_divide_over_the_processes() -> None:
    assert distributed.local_batch_size(32, 4) == 8
    with pytest.raises(ConfigError, match="global batch"):
        distributed.local_batch_size(10, 4)


@pytest.mark.parametrize("kind", ["BatchNorm2d", "BatchNormAct2d"])
def test_global_batchnorm_is_batchnorm(kind: str) -> None:
    """The CPU SyncBatchNorm in a 1-process group: outputs, gradients and running statistics of BatchNorm."""
    import torch.distributed as dist
    from timm.layers import BatchNormAct2d

    make = (lambda: torch.nn.BatchNorm2d(5)) if kind == "BatchNorm2d" else (lambda: BatchNormAct2d(5))
    torch.manual_seed(0)
    plain, synced = make(), make()
    for m in (plain, synced):
        torch.nn.init.normal_(m.weight)
        torch.nn.init.normal_(m.bias)
    synced.load_state_dict(plain.state_dict())
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        d = distributed.Dist(torch.device("cpu"), world_size=2)  # as if under torchrun: convert
        distributed.sync_batchnorm(synced, d)
        assert type(synced).__name__ == f"Global{kind}"
        assert set(synced.state_dict()) == set(plain.state_dict())
        x = torch.randn(6, 5, 4, 3) * 3 + 1
        outs = []
        for m in (plain, synced):
            xi = x.clone().requires_grad_()
            # In a group of one the converted layer takes its class's own path: call the global one directly.
            y = distributed._global_batch_norm(m, xi) if m is synced else m(xi)
            if m is synced and kind == "BatchNormAct2d":
                y = m.act(m.drop(y))
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            outs.append((y.detach(), xi.grad, m.weight.grad, m.bias.grad))
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(synced, k), getattr(plain, k))
    finally:
        dist.destroy_process_group()


# --- 2 processes under torchrun ---------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_two_processes_match_one(one_process, two_processes) -> None:
    one, _ = one_process
    out, _ = two_processes
    h1, h2 = list(one.history), _history(out)
    assert [h["step"] for h in h2] == [h["step"] for h in h1] == [3, 6]  # global batch 8 in both
    assert h2[0]["train_loss"] == pytest.approx(h1[0]["train_loss"], rel=1e-4)
    for a, b in zip(h1[1:], h2[1:], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
    for a, b in zip(h1, h2, strict=True):
        for k in ("val_top1", "val_coarse_top1", "val_ema_top1"):
            assert abs(a[k] - b[k]) <= ONE_PHOTO, (k, a, b)
    card = json.loads((out / "bundle" / "card.json").read_text(encoding="utf-8"))["metrics"]
    for k in ("top1", "coarse_top1"):
        assert abs(card[k] - one.card.metrics[k]) <= ONE_PHOTO, (k, card[k], one.card.metrics[k])
    assert abs(card["macro_f1"] - one.card.metrics["macro_f1"]) <= 0.25
    assert abs(card["attribute_map"] - one.card.metrics["attribute_map"]) <= 0.05


@pytest.mark.timeout(300)
def test_rank_zero_alone_writes_and_speaks(one_process, two_processes) -> None:
    one, _ = one_process
    out, output = two_processes
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one.run_dir.iterdir())
    assert sorted(p.name for p in (out / "bundle").iterdir()) == ["card.json", "model.safetensors"]
    assert [h["epoch"] for h in _history(out)] == [1, 2]  # one line per epoch: one writer
    assert not (out / "checkpoint").exists()
    assert output.count("model bundle:") == 1 and output.count("INFO catalogue:") == 1
    assert output.count("epoch 1: loss=") == 1  # rank 0's epoch line; rank 1 shows no progress
    assert "distributed: rank 0 of 2 on cpu (gloo)" in output
    assert "rank 1 of 2" not in output  # the other ranks' logs would repeat rank 0's
    warnings = [ln for ln in output.splitlines() if ln.startswith("WARNING ")]
    assert sum("holdout_fraction 0.2 is not used" in w for w in warnings) == 1, warnings  # once, not once per rank
    assert len(warnings) == len(set(warnings)), warnings


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.timeout(400)
def test_kill_and_resume_two_processes(tiny_catalogue: Path, tmp_path: Path, two_processes) -> None:
    """kill -9 of the launcher and both workers after the first checkpoint; --resume finishes the same run."""
    uninterrupted, _ = two_processes
    out = tmp_path / "killed"
    state = out / "checkpoint" / "state.json"
    log = (tmp_path / "log").open("w")
    proc = subprocess.Popen(_torchrun(tiny_catalogue, out), env=_env(), stdout=log, stderr=log)
    deadline = time.monotonic() + 200
    try:
        while not state.is_file():
            assert proc.poll() is None, (tmp_path / "log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 200 s"
            time.sleep(0.02)
        for pid in (*_children(proc.pid), proc.pid):  # the workers run in sessions of their own
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    ckpt = load_checkpoint(out / "checkpoint")
    assert ckpt is not None and ckpt["state"]["epoch"] == 1 and "ema" in ckpt
    assert not (out / "report").exists()

    resumed = subprocess.run(_torchrun(tiny_catalogue, out, "--resume"), check=False, env=_env(),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [h["epoch"] for h in _history(out)] == [1, 2]
    assert not (out / "checkpoint").exists()
    card = json.loads((out / "bundle" / "card.json").read_text(encoding="utf-8"))
    assert card["metrics"]["resumed"] is True
    # The same computations in the same order: the resumed run ends where the uninterrupted one did.
    a = load_file(str(out / "bundle" / "model.safetensors"))
    b = load_file(str(uninterrupted / "bundle" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert [h["val_top1"] for h in _history(out)] == [h["val_top1"] for h in _history(uninterrupted)]
