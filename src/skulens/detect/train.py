"""Train the product detector on synthetic composites from the catalogue (and real boxes, if any).

No detection weights can be downloaded and no shop has drawn boxes for its catalogue, so the default
recipe pastes catalogue cut-outs (and generated product-shaped objects) onto canvases where the boxes
are known by construction. Real annotations (VOC / COCO / YOLO) mix in when the user has them.

Selection is honest: a share of the *products* is held out of training entirely, and the detector kept
is the one with the best AP@0.5 on composites made only of those unseen products.

Under torchrun (`torchrun --nproc_per_node N -m skulens.cli detect train ...`) the same path as the
classifier's (`train.distributed`): each process builds a B/N share of every global batch of B canvases (the
one-process run's canvases, split by rank), DistributedDataParallel averages the gradients, the schedule's
wall-clock progress is rank 0's, and rank 0 alone evaluates the held-out products and writes the detector.
(The backbone's batch norms are frozen, so there are no batch statistics to synchronise.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..train import distributed
from ..train.optim import is_decayed
from .boxes import AnnotatedImage, Detections
from .detector import Detector
from .model import (
    DETECTOR_WEIGHTS,
    DetectorCard,
    DetectorConfig,
    DetectorError,
    build_detector,
    is_detector,
    load_detector_net,
    save_detector,
)

if TYPE_CHECKING:
    from .synth import CompositeGenerator

__all__ = ["DetectorRecipe", "DetectorTrainResult", "calibrate_min_score", "check_out", "choose_min_score",
           "preview_composites", "train_detector"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorRecipe:
    """The default recipe fits in an hour on a 2-core laptop CPU (measured: benchmarks/RESULTS.md): it runs
    `steps` steps or `max_minutes` of wall time, whichever ends first, with the learning-rate schedule
    following whichever is further along. The steps are set so the time budget is what ends a run on a
    2-core CPU: measured side by side, 1771 steps in 55 min beat 900 in 34 min on the held-out products
    (AP@0.5 0.953 vs 0.934, count exact 44.5 % vs 34.5 %) and on the real fridge photos."""

    steps: int = 1800
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 60
    train_sizes: tuple[int, ...] = (384, 448, 512)  # short side, one drawn per batch (multi-scale)
    canvas: int = 512
    holdout_products: float = 0.15  # share of products never pasted into a training canvas
    holdout_canvases: int = 48
    eval_every: int = 150
    real_share: float = 0.5  # share of each batch from real annotations, when given
    max_minutes: float | None = 55.0  # the schedule ends at this wall time if the steps take longer
    workers: int = 1
    seed: int = 0
    # Catalogue products whose catalogue photo shows several items (three tomatoes, a papaya and its half): their
    # cut-outs stay out of every composite, which would box the group as one product; their photos still serve.
    several_items: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.workers < 0:
            raise ValueError("steps, batch_size and eval_every must be >= 1, workers >= 0")
        if not 0 < self.lr < 1 or self.weight_decay < 0:
            raise ValueError(f"need 0 < lr < 1 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if not 0 <= self.holdout_products < 0.5 or not 0 <= self.real_share <= 1:
            raise ValueError("holdout_products must be in [0, 0.5) and real_share in [0, 1]")
        if not self.train_sizes or min(self.train_sizes) < 64:
            raise ValueError(f"train_sizes must be sizes >= 64, got {self.train_sizes}")
        if self.max_minutes is not None and not self.max_minutes > 0:  # `not >`: NaN too
            raise ValueError(f"max_minutes must be > 0 (None: no time limit), got {self.max_minutes}")
        if not 0 <= self.seed < 2**32:  # NumPy's generators take no negative seed
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if isinstance(self.several_items, str) or not all(isinstance(x, str) and x for x in self.several_items):
            raise ValueError(f"several_items must be product labels, got {self.several_items!r}")
        object.__setattr__(self, "several_items", tuple(self.several_items))


@dataclass(frozen=True)
class DetectorTrainResult:
    path: Path
    steps: int
    minutes: float
    best_step: int
    holdout: dict[str, float]  # AP@0.5, count exact ... on composites of held-out products
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "steps"  # steps | time


def _lr_factor(progress: float, step: int, recipe: DetectorRecipe) -> float:
    """Warmup, then cosine to 2 % over the run's progress (steps, or wall time under max_minutes)."""
    if step < recipe.warmup_steps:
        return 0.05 + 0.95 * step / recipe.warmup_steps
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _progress(step: int, start: float, recipe: DetectorRecipe) -> float:
    """How far the run is: by steps, or by wall time when `max_minutes` is set and comes first, so a
    run stopped by the clock still ends with an annealed learning rate."""
    p = step / recipe.steps
    if recipe.max_minutes:
        p = max(p, (time.monotonic() - start) / 60 / recipe.max_minutes)
    return p


def _param_groups(net: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (decay if is_decayed(name, p) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def real_photos_per_batch(recipe: DetectorRecipe) -> int:
    """Photos with real boxes in each batch that also holds composites: at least one whenever real_share > 0
    (round(1 * 0.5) is 0, which silently dropped --boxes at batch size 1), and at least one composite."""
    if recipe.real_share == 0:
        return 0
    if recipe.batch_size < 2:
        raise ValueError("real boxes beside composites need batch_size >= 2 (one of each per batch at least); "
                         "or train on the real boxes alone (--no-composites)")
    return min(recipe.batch_size - 1, max(1, round(recipe.batch_size * recipe.real_share)))


class _RealBoxes(torch.utils.data.Dataset):
    """Annotated photos, shrunk so the long side is `size`, with their boxes."""

    def __init__(self, images: Sequence[AnnotatedImage], size: int):
        from ..data.decode import ImageDecodeError, decode_image
        from .annotations import AnnotationError

        self.images = [im for im in images if im.path is not None]
        self.size = size
        # Each photo decoded once now: a truncated file found at step 900 would end the run there.
        bad = []
        for im in self.images:
            try:
                decode_image(im.path, reduce_to=size)
            except ImageDecodeError as e:
                bad.append(str(e))
        if bad:
            raise AnnotationError(f"{len(bad)} annotated photo(s) cannot be decoded: " + "; ".join(bad[:3]))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from ..data.decode import decode_image

        item = self.images[i]
        pil = decode_image(item.path)
        scale = min(1.0, self.size / max(pil.size))
        if scale < 1:
            pil = pil.resize((round(pil.width * scale), round(pil.height * scale)))
        # Each axis by its own ratio: rounding the shrunk size makes them differ (100x4000 -> 13x512).
        sx = pil.width / item.width if item.width else scale
        sy = pil.height / item.height if item.height else scale
        boxes = torch.from_numpy(item.boxes * np.array([sx, sy, sx, sy], np.float32))
        x = torch.from_numpy(np.asarray(pil, np.uint8).copy()).permute(2, 0, 1)
        return x, {"boxes": boxes.reshape(-1, 4), "labels": torch.zeros(len(boxes), dtype=torch.int64)}


def _loader(dataset: torch.utils.data.Dataset, batch: int, workers: int, seed: int,
            d: distributed.Dist | None = None) -> Iterator[list]:
    """An endless stream of batches (lists: detection images differ in size). Under DDP (`d` enabled) this
    process's share of each global batch of `batch`: items rank, rank + W, ... of the batch one process
    would have drawn (the same shuffled order)."""
    epoch = 0
    world, rank = (d.world_size, d.rank) if d is not None else (1, 0)
    local = distributed.local_batch_size(batch, world)
    while True:
        g = torch.Generator().manual_seed(seed + epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # composites: new scenes every epoch
        drop_last = len(dataset) > batch
        if world == 1:
            dl = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, generator=g,
                                             num_workers=workers, collate_fn=list, drop_last=drop_last,
                                             persistent_workers=False)
        else:
            order = distributed.single_process_order(len(dataset), seed + epoch, in_tqdm=False)
            batches = [order[i:i + batch] for i in range(0, len(order), batch)]
            if drop_last and len(batches[-1]) < batch:
                batches.pop()
            mine = [b[rank::world] for b in batches if len(b[rank::world]) == local]
            dl = torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=workers, collate_fn=list,
                                             persistent_workers=False)
        yield from dl
        epoch += 1


def _to_float(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [x.float().div(255) for x, _ in batch]
    return images, [t for _, t in batch]


def _to_device(images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], device: torch.device
               ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    if device.type == "cpu":
        return images, targets
    return ([x.to(device, non_blocking=True) for x in images],
            [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])


def holdout_score(detector: Detector, canvases: Sequence[tuple[Any, AnnotatedImage]],
                  score_threshold: float = 0.5) -> dict[str, float]:
    from .evaluate import evaluate_detections

    dets: list[Detections] = detector.detect([im for im, _ in canvases], tiles="off")
    report = evaluate_detections([a for _, a in canvases], dets, score_threshold=score_threshold)
    return {"ap50": report.ap50, "ap": report.ap, "recall50": report.recall50,
            "false_per_image": report.false_per_image, "count_mae": report.count_mae,
            "count_exact": report.count_exact}


def choose_min_score(detector: Detector, canvases: Sequence[tuple[Any, AnnotatedImage]],
                     grid: Sequence[float] = tuple(np.round(np.arange(0.3, 0.851, 0.025), 3))
                     ) -> tuple[float, dict[str, float]]:
    """The detector score threshold that counts the held-out canvases best: most canvases counted exactly,
    then the smallest mean count error (ties: the lower threshold)."""
    dets = detector.detect([im for im, _ in canvases], tiles="off")
    truth = np.array([len(a) for _, a in canvases])
    best: tuple[tuple[float, float], float] | None = None
    for t in grid:
        found = np.array([int((d.scores >= t).sum()) for d in dets])
        key = (float(np.mean(found == truth)), -float(np.mean(np.abs(found - truth))))
        if best is None or key > best[0]:
            best = (key, float(t))
    assert best is not None
    (exact, neg_mae), t = best
    return t, {"min_score": t, "count_exact": exact, "count_mae": -neg_mae, "canvases": len(canvases)}


def calibrate_min_score(directory: str | os.PathLike, canvases: Sequence[tuple[Any, AnnotatedImage]]) -> float:
    """Choose a trained detector's counting threshold on `canvases` and write it into its card."""
    from ..models.bundle import atomic_write_text

    net, card = load_detector_net(directory)
    t, record = choose_min_score(Detector(net, card, device="cpu"), canvases)
    card.config = replace(card.config, min_score=t)
    card.training["count_threshold"] = record
    atomic_write_text(Path(directory) / "detector.json", card.to_json())
    return t


def preview_composites(data: str | os.PathLike, path: str | os.PathLike, *, n: int = 8, seed: int = 0) -> Path:
    """A grid PNG of `n` training composites with their boxes drawn (what the detector learns from)."""
    from .synth import composite_sources, preview

    ds, _ = composite_sources(data, DetectorRecipe(seed=seed, holdout_canvases=0), length=n)
    return Path(preview(ds.generator, n, path))


def check_out(out: str | os.PathLike, *, init: str | os.PathLike | None = None, overwrite: bool = False) -> None:
    """DetectorError when training into `out` would lose a detector: `out` is the `init` detector being fine-tuned
    (always), or it already holds one (unless `overwrite`)."""
    o = Path(out)
    if init is not None and (o.resolve() == Path(init).resolve()
                             or (o.exists() and Path(init).exists() and os.path.samefile(o, init))):
        raise DetectorError(f"{o}: the detector --init fine-tunes would be overwritten; write to another folder (-o)")
    if (o / "card.json").is_file():  # a classification bundle: its folder then held both, and passed as either
        raise DetectorError(f"{o} is a classification bundle (card.json); write the detector to a folder of its own "
                            "(-o)")
    if not overwrite and (is_detector(o) or (o / DETECTOR_WEIGHTS).exists()):
        raise DetectorError(f"{o} already holds a detector; choose another folder (-o), or replace it: --force "
                            "(overwrite=True in Python)")


def train_detector(data: str | os.PathLike | None, out: str | os.PathLike, *,
                   recipe: DetectorRecipe | None = None, config: DetectorConfig | None = None,
                   annotations: Sequence[AnnotatedImage] = (), init: str | os.PathLike | None = None,
                   composites: CompositeGenerator | None = None, progress: bool = True,
                   device: str = "cpu", overwrite: bool = False) -> DetectorTrainResult:
    """Train a detector into the folder `out` (detector.safetensors, detector.json, history.json).

    data: a catalogue (its catalogue photos and labelled photos become cut-outs); None trains on real
    `annotations` alone, or on `composites` (a generator of your own, e.g. your own cut-outs).
    init: a detector folder to fine-tune instead of starting from ImageNet; never `out` itself.
    overwrite: replace a detector already in `out` (else DetectorError before anything runs); its weights
    are replaced at the first held-out check, and an exported detector.onnx there is removed then.
    Under torchrun, data-parallel over the processes (see the module docstring); every rank returns rank 0's
    result.
    """
    recipe, config = recipe or DetectorRecipe(), config or DetectorConfig()
    check_out(out, init=init, overwrite=overwrite)
    if data is None and not annotations and composites is None:
        raise ValueError("nothing to train on: give a catalogue (--data) or box annotations (--boxes)")
    if data is not None and composites is not None:
        raise ValueError("give a catalogue or a composite generator, not both")
    from ..models.inference import resolve_device

    d = distributed.setup(resolve_device(device))
    try:
        result = _train(data, Path(out), recipe, config, annotations, init, composites, progress and d.is_main, d)
        return d.broadcast(result)
    finally:
        d.close()


def _train(data: str | os.PathLike | None, out: Path, recipe: DetectorRecipe, config: DetectorConfig,
           annotations: Sequence[AnnotatedImage], init: str | os.PathLike | None,
           composites: CompositeGenerator | None, progress: bool, d: distributed.Dist) -> DetectorTrainResult | None:
    from tqdm.auto import tqdm

    from .synth import CompositeDataset, composite_sources

    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)  # the same on every rank: multi-scale sizes are drawn alike
    length = recipe.steps * recipe.batch_size
    if composites is not None:
        train_ds, holdout = CompositeDataset(composites, length), []
    elif data is not None:
        train_ds, holdout = composite_sources(data, recipe, length=length)
    else:
        train_ds, holdout = None, []
    real = _RealBoxes(annotations, recipe.canvas) if annotations else None
    if init is not None:
        net, old = load_detector_net(init)
        config = old.config
    else:
        net = build_detector(config)
    card = DetectorCard(config, {"recipe": asdict(recipe), "data": None if data is None else str(data),
                                 "real_photos": len(real) if real else 0, "init": None if init is None else str(init)})
    net.to(d.device)
    opt = torch.optim.AdamW(_param_groups(net, recipe.weight_decay), lr=recipe.lr)
    n_real = recipe.batch_size if train_ds is None else real_photos_per_batch(recipe) if real else 0
    streams = []
    if train_ds is not None and n_real < recipe.batch_size:
        streams.append(_loader(train_ds, recipe.batch_size - n_real, recipe.workers, recipe.seed, d))
    if real is not None and n_real:
        streams.append(_loader(real, n_real, 0, recipe.seed + 1, d))
    trained = distributed.wrap(net, d)  # frozen blocks are not DDP's: only what trains is all-reduced
    net.transform.min_size = tuple(recipe.train_sizes)
    history: list[dict[str, float]] = []
    best: tuple[float, int] = (-1.0, 0)
    start = time.monotonic()
    stopped = "steps"
    bar = tqdm(range(recipe.steps), desc="detector", unit="step", disable=not progress)
    timed = recipe.max_minutes is not None
    for step in bar:
        # Wall-clock progress is rank 0's: every rank must use the same learning rate and stop together.
        done = d.broadcast(_progress(step, start, recipe)) if timed else _progress(step, start, recipe)
        for group in opt.param_groups:
            group["lr"] = recipe.lr * _lr_factor(done, step, recipe)
        batch = [item for stream in streams for item in next(stream)]
        images, targets = _to_device(*_to_float(batch), d.device)
        net.train()
        losses = trained(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss became {loss.item()}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 10.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        last = step + 1 == recipe.steps
        over_time = timed and d.broadcast(_progress(step + 1, start, recipe) >= 1) and not last
        if (step + 1) % recipe.eval_every == 0 or last or over_time:
            d.check_in_step(net, f"step {step + 1}")
            row: dict[str, float] = {"step": step + 1, "loss": d.mean(float(loss.item())),
                                     "minutes": (time.monotonic() - start) / 60}
            row.update({k: d.mean(float(v.item())) for k, v in losses.items()})
            if not d.is_main:  # rank 0 evaluates and writes; the others go on with the next step
                if over_time:
                    break
                continue
            if holdout:
                net.transform.min_size = (config.min_size,)
                row.update(holdout_score(Detector(net, card, device=str(d.device)), holdout))
                net.transform.min_size = tuple(recipe.train_sizes)
            history.append(row)
            score = row.get("ap50", float(step))
            if score > best[0]:
                best = (score, step + 1)
                net.transform.min_size = (config.min_size,)
                card.training.update({"best_step": step + 1, "holdout": {k: v for k, v in row.items()
                                                                           if k in ("ap50", "ap", "count_exact")}})
                save_detector(net, card, out)
                net.transform.min_size = tuple(recipe.train_sizes)
            log.info("step %d: %s", step + 1, row)
            if over_time:
                stopped = "time"
                break
    if not d.is_main:
        return None
    minutes = (time.monotonic() - start) / 60
    card.training.update({"steps_run": len(history) and int(history[-1]["step"]), "minutes": round(minutes, 1),
                          "stopped": stopped, "history": history})
    net.transform.min_size = (config.min_size,)
    (out / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    # The card records the whole run; the weights stay those of the best step.
    from ..models.bundle import atomic_write_text

    atomic_write_text(out / "detector.json", card.to_json())
    if holdout:
        calibrate_min_score(out, holdout)  # the counting threshold, on the same held-out products
    # held-out scores only where there were held-out canvases (a run on real boxes alone measured none)
    holdout_best = next((h for h in history if int(h["step"]) == best[1]), {}) if holdout else {}
    return DetectorTrainResult(out, int(history[-1]["step"]) if history else 0, minutes, best[1],
                               {k: v for k, v in holdout_best.items() if k not in ("step", "minutes")}, history,
                               stopped)
