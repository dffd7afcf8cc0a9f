"""Data-parallel training under torchrun: process group, ranks, the sharded sampler, the DDP wrapper.

`torchrun --nproc_per_node N -m skulens.cli train ...` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set; `setup` turns that into a process group (gloo on CPU, NCCL on CUDA, one GPU per process).
Without those variables (or with WORLD_SIZE=1) nothing here does anything: `Dist.single` is a run of one
process and the engine takes exactly its one-process path. Also here: a sampler that shards the one-process
batch order, BatchNorm over the global batch (PyTorch's SyncBatchNorm on CUDA, a CPU equivalent for gloo)
and the DDP wrapper.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from ..config import ConfigError

__all__ = ["Dist", "ShardedSampler", "local_batch_size", "setup", "single_process_order", "sync_batchnorm",
           "wrap"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Rank 0 alone validates, writes checkpoints and (on a fresh run) fits the linear-probe baseline while the
# other ranks wait in a collective; the default timeout (10 min under NCCL) would kill a run whose val set
# takes longer than that.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size, its device, and whether it created the process group."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def single(cls, device: torch.device) -> Dist:
        return cls(device=device)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (pickled; for small things: the loop state, the result)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, by rank, on every rank (pickled, as `broadcast`); `[obj]` in one process."""
        if not self.enabled:
            return [obj]
        seen: list[Any] = [None] * self.world_size
        dist.all_gather_object(seen, obj)
        return seen

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (equal shard sizes: the global mean of per-rank means)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def same_everywhere(self, what: str, value: Any, *,
                        advice: str = "every node must see the same --data and --out (shared storage)") -> None:
        """Raise on every rank when ranks disagree about `value` (e.g. which checkpoint each one found); the
        error names `what`, every rank's `value` and ends with `advice`."""
        if not self.enabled:
            return
        seen = self.gather(value)
        if any(v != seen[0] for v in seen):
            raise RuntimeError(f"the {self.world_size} processes disagree about {what}: {seen} (by rank); {advice}")

    def check_in_step(self, model: nn.Module, when: str) -> None:
        """Raise when the ranks' weights have drifted apart (they must stay equal: every rank applies the same
        all-reduced gradients; drift means some trainable parameter is not synced, e.g. a DDP not rebuilt
        after unfreezing). One float per rank: the weights' sum of squares, compared to 1e-9."""
        if not self.enabled:
            return
        with torch.no_grad():
            norm = float(sum(p.detach().double().square().sum() for p in model.parameters()))
        seen = self.gather(norm)
        if max(abs(v - seen[0]) for v in seen) > 1e-9 * max(1.0, abs(seen[0])):
            raise RuntimeError(f"{when}: the processes' weights differ ({seen}, by rank); some trainable "
                               "parameter is not synchronised by DistributedDataParallel")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def setup(device: torch.device) -> Dist:
    """Join torchrun's process group when launched by it with WORLD_SIZE > 1 (or use one already
    initialised by the caller); otherwise a one-process `Dist` on `device`."""
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
    else:
        rank, world, owns = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), True
    if world <= 1:
        return Dist.single(device)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    local_rank = _env_int("LOCAL_RANK", rank % max(1, gpus))
    if device.type == "cuda":
        # One GPU per process: a --device cuda:K is overridden by the local rank (torchrun's convention).
        if device.index not in (None, local_rank):
            log.warning("--device %s ignored under torchrun: process %d uses cuda:%d", device, rank,
                        local_rank)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    log.info("distributed: rank %d of %d on %s (%s)", rank, world, device, dist.get_backend())
    return Dist(device, rank=rank, world_size=world, local_rank=local_rank, owns_group=owns)


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's batch: --batch-size is the global batch, split evenly over the processes."""
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} is the global batch and must divide evenly over the "
                          f"{world_size} processes (e.g. {world_size * max(1, batch_size // world_size)})")
    return batch_size // world_size


class _Positions(torch.utils.data.Dataset):
    """0..n-1, fetched a batch at a time."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def __getitems__(self, indices: list[int]) -> list[int]:
        return list(indices)


def single_process_order(n: int, seed: int, *, in_tqdm: bool = True) -> list[int]:
    """The order in which one process's epoch visits the n training samples: the engine's
    `tqdm(DataLoader(shuffle=True, generator=manual_seed(seed)))` (`in_tqdm` False: the plain DataLoader, as
    the detector's trainer iterates it), built the same way and read in one batch.

    Built, not re-derived: the order is a randperm drawn after the loader's own draws from the generator
    (one workers' base seed per iterator, and tqdm.auto opens an extra iterator in its constructor), which
    are PyTorch and tqdm internals. tests/test_train_ddp.py checks it against one-process runs.
    """
    if n == 0:
        return []
    loader = torch.utils.data.DataLoader(_Positions(n), batch_size=n, shuffle=True, collate_fn=list,
                                         generator=torch.Generator().manual_seed(seed))
    return list(next(iter(tqdm(loader, disable=True) if in_tqdm else loader)))


class ShardedSampler(DistributedSampler):
    """DistributedSampler (call `set_epoch` each epoch; drop_last: equal shards) whose global order is the
    one-process run's: rank r takes positions r, r + W, r + 2W, ... of that order, so step k's global batch
    (the union of the ranks' k-th batches of B/W) is exactly the one-process run's k-th batch of B. Same
    data, same batches, whatever the number of processes: a run resumed with another world size continues
    the same trajectory, and 1 and N processes can be compared at all. (DistributedSampler's own order is
    a different permutation of the same seed.)"""

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        if self.num_samples == 0:
            raise ConfigError(f"{len(dataset)} training images cannot be shared by {num_replicas} processes")

    def __iter__(self):  # type: ignore[override]
        order = single_process_order(len(self.dataset), self.seed + self.epoch)  # type: ignore[arg-type]
        return iter(order[: self.total_size][self.rank :: self.num_replicas])


def sync_batchnorm(model: nn.Module, d: Dist, *, enabled: bool = True) -> nn.Module:
    """BatchNorm over the global batch (the default under DDP), or over each process's shard (`enabled`
    False).

    A process's batch is B/W images, so plain BatchNorm would normalise with statistics of B/W images, not B,
    and keep running statistics of those: with the small batches of fine-tuning that changes the training
    (measured on the test's tiny run, 2 CPU processes with per-process statistics: the first step's loss 8 %
    off one process's, epoch 1's 4 %; synchronised: 1e-6). Synchronised, the statistics are all-reduced: the
    math of one process at batch B. Only layers in train mode sync; frozen stages (train_mode keeps them in
    eval) and evaluation cost nothing. On CUDA this is PyTorch's SyncBatchNorm (via timm's converter, which
    keeps BatchNormAct2d's activation); PyTorch has no CPU kernels for it, so under gloo the layers get
    `_GlobalBatchStats` instead. Either way the parameters stay the same objects and the state-dict keys the
    same: bundles load into plain BatchNorm.
    """
    if not d.enabled or not enabled:
        return model
    if d.device.type == "cuda":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _GlobalBatchStats):
            if type(m) not in _GLOBAL_BASES:
                log.warning("%s: BatchNorm statistics stay per process", type(m).__name__)
                continue
            m.__class__ = _global_class(type(m))
    return model


class _GlobalBatchStats(nn.Module):
    """Mixin for a BatchNorm class: in train mode under a process group, batch statistics of all ranks'
    shards together (CPU SyncBatchNorm); otherwise the class's own forward. Set as an instance's class
    (`sync_batchnorm`), so weights, buffers and their names stay as they were."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        x = _global_batch_norm(self, x)  # type: ignore[arg-type]
        if hasattr(self, "drop"):  # timm's BatchNormAct2d: normalise, then dropout and activation
            x = self.drop(x)
        if hasattr(self, "act"):
            x = self.act(x)
        return x


def _global_bases() -> tuple[type, ...]:
    bases: list[type] = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d]
    try:
        from timm.layers import BatchNormAct2d

        bases.append(BatchNormAct2d)
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return tuple(bases)


_GLOBAL_BASES = _global_bases()
_GLOBAL_CLASSES: dict[type, type] = {}


def _global_class(base: type) -> type:
    if base not in _GLOBAL_CLASSES:
        _GLOBAL_CLASSES[base] = type(f"Global{base.__name__}", (_GlobalBatchStats, base),
                                     {"__module__": __name__})
    return _GLOBAL_CLASSES[base]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a sum is summed too (every rank's loss depends
    on every rank's input). torch.distributed.nn.functional.all_reduce does this, but PyTorch 2.14 warns
    that it is deprecated."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Batch normalisation with the mean and variance of the global batch, and running statistics updated
    as one process would (unbiased variance, momentum or cumulative average).

    Each rank's count, sum and sum of squares per channel (from its own stable var_mean, combined in
    float64) are summed over the ranks by an all-reduce that autograd sees through: its backward all-reduces
    the gradients, so every rank's inputs receive the gradient of all ranks' losses, as in SyncBatchNorm.
    """
    c = x.shape[1]
    dims = [0, *range(2, x.dim())]
    xf = x.float()
    var, mean = torch.var_mean(xf, dims, correction=0)
    n = xf.numel() // c
    m64 = mean.double()
    local = torch.cat([m64 * n, (var.double() + m64 * m64) * n, m64.new_tensor([n])])
    total = _AllReduceSum.apply(local)
    count = total[-1].detach()
    g_mean = total[:c] / count
    g_var = (total[c : 2 * c] / count - g_mean * g_mean).clamp_min(0)
    if bn.training and bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            momentum = bn.momentum
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if momentum is None:
                    momentum = 1.0 / float(bn.num_batches_tracked)
            momentum = 0.0 if momentum is None else momentum
            unbiased = g_var * (count / (count - 1).clamp_min(1))
            bn.running_mean.mul_(1 - momentum).add_(g_mean.to(bn.running_mean.dtype), alpha=momentum)
            bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (xf - g_mean.float().view(shape)) * torch.rsqrt(g_var.float().view(shape) + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.float().view(shape)
    if bn.bias is not None:
        y = y + bn.bias.float().view(shape)
    return y.to(x.dtype)


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """`model` for the training forward: itself in one process, else a DistributedDataParallel over it.

    DDP registers the parameters that require grad when it is built and all-reduces only those; frozen
    ones (requires_grad False: head/partial/gradual's first epochs) are simply not its parameters, so
    find_unused_parameters stays off (it would cost a graph walk every step). Call again whenever the
    freeze changes (gradual unfreezing): a DDP built before would never sync the newly trainable backbone
    and the ranks would drift apart. Building one broadcasts rank 0's weights and buffers (already equal).
    """
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index] if d.device.type == "cuda" else None
    # Buffers (BatchNorm running statistics) are broadcast from rank 0 before each forward (DDP's default):
    # without SyncBatchNorm each rank would otherwise keep statistics of its own shards.
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                   find_unused_parameters=False)
