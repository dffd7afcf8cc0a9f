"""Deployment benchmark: every inference variant of a bundle, measured end to end in one run.

For each variant: top-1 on a catalogue split (computed on the timed pass itself), weights size,
single-image latency p50/p99 (file -> prediction, batch 1), end-to-end throughput (JPEG decode +
preprocessing + inference, images/s), peak memory, and the ratios to the baseline. The baseline is what a
naive seed script does: PIL open, PIL resize + torchvision ToTensor/Normalize one image at a time, PyTorch
eager fp32, batch 64. The other variants use skulens' own decoding (`decode_image`: JPEG draft()
reduced-size decoding, one Lanczos shrink to the card's resize size) in parallel worker threads that
prefetch the next batches while the current one runs.

With `isolate=True` (the CLI default) each variant runs in a fresh process, so the peak resident memory
is that variant's own and no variant warms another's caches or thread pools.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["RUNTIMES", "BenchResult", "BenchRow", "DetectionRow", "Variant", "bench_bundle", "bench_detection",
           "detection_markdown", "one_megapixel_jpegs", "run_bench", "to_markdown"]

RUNTIMES: dict[str, str] = {
    "baseline": "PyTorch eager fp32, naive preprocessing (PIL open/resize, ToTensor/Normalize), batch 64",
    "torch-fp32": "PyTorch fp32, channels-last",
    "torch-bf16": "PyTorch bf16 autocast, channels-last",
    "torch-dynamic-int8": "PyTorch fp32 with dynamic int8 Linear heads (quantize_dynamic)",
    "onnx-fp32": "ONNX Runtime fp32",
    "onnx-int8": "ONNX Runtime int8 (static QDQ, per-channel, backbone only)",
    "torch-compile": "PyTorch fp32, channels-last, torch.compile (inductor; on CUDA with CUDA graphs)",
    "tflite-fp32": "LiteRT (TFLite) fp32, XNNPACK (litert-torch export)",
    "tflite-int8": "LiteRT (TFLite) int8 (static, per-channel, backbone only)",
}
DEFAULT_RUNTIMES = ("baseline", "torch-fp32", "torch-bf16", "torch-dynamic-int8", "onnx-fp32", "onnx-int8")
BASELINE_BATCH = 64  # the naive seed script's batch size


@dataclass(frozen=True)
class Variant:
    name: str  # row label, e.g. "default (onnx-int8)"
    runtime: str  # a RUNTIMES key
    bundle: str  # the bundle: card (preprocessing, labels) and, for PyTorch runtimes, weights
    model_file: str | None = None  # the .onnx / .tflite file for ONNX and LiteRT runtimes
    device: str = "cpu"  # PyTorch runtimes: cpu or cuda[:N]; ONNX: its CUDA provider when cuda and installed


@dataclass(frozen=True)
class BenchRow:
    name: str
    runtime: str
    backbone: str
    top1: float
    n_images: int
    size_mb: float  # weights on disk (ONNX: the file; dynamic int8: fp32 weights with int8 Linear layers)
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_ips: float  # images/s, end to end: decode + preprocessing + inference
    peak_rss_mb: float
    speedup: float = 1.0  # throughput / the baseline's
    top1_delta: float = 0.0  # top-1 minus the baseline's, in points

    @property
    def description(self) -> str:
        return RUNTIMES.get(self.runtime, self.runtime)


@dataclass(frozen=True)
class BenchResult:
    rows: tuple[BenchRow, ...]
    split: str
    n_images: int
    threads: int
    workers: int
    batch_size: int
    isolated: bool  # one fresh process per variant (peak memory is the variant's own)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> BenchRow:
        return next(r for r in self.rows if r.runtime == "baseline")

    def reference(self, name: str = "default (torch-fp32)") -> BenchRow | None:
        """A row by name: by default the default model's own fp32 accuracy, with skulens' preprocessing."""
        return next((r for r in self.rows if r.name == name), None)

    def goal(self, min_speedup: float = 4.0, max_top1_loss: float = 1.0, against: BenchRow | None = None
             ) -> BenchRow | None:
        """The fastest row at >= `min_speedup` x the baseline with at most `max_top1_loss` points lost
        against the baseline, or against the row `against` (e.g. `reference()`)."""
        def change(r: BenchRow) -> float:
            return r.top1_delta if against is None else 100 * (r.top1 - against.top1)

        ok = [r for r in self.rows if r.speedup >= min_speedup and change(r) >= -max_top1_loss - 1e-9]
        return max(ok, key=lambda r: r.throughput_ips, default=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = [{**asdict(r), "description": r.description} for r in self.rows]
        return {"schema": 1, **d}


# -------------------------------------------------------------------------------------------- pipelines


def _naive_loader(card: Any) -> Callable[[str], Any]:
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(card.resize_to), T.CenterCrop(card.input_size), T.ToTensor(),
                    T.Normalize(list(card.mean), list(card.std))])
    return lambda path: tf(Image.open(path).convert("RGB"))


def _fast_loader(card: Any) -> Callable[[str], Any]:
    from ..data.decode import decode_image
    from ..data.transforms import create_transform, to_uint8_tensor

    tf = create_transform(card)
    return lambda path: tf(to_uint8_tensor(decode_image(path, reduce_to=card.resize_to)))


def _batches(paths: Sequence[str], load: Callable[[str], Any], batch_size: int,
             pool: ThreadPoolExecutor | None, ahead: int = 2) -> Iterator[Any]:
    """Stacked batches in order; with a pool, the next `ahead` batches decode while this one runs."""
    import torch

    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    if pool is None:
        for chunk in chunks:
            yield torch.stack([load(p) for p in chunk])
        return
    queue: deque[list[Future]] = deque()
    for chunk in chunks:
        queue.append([pool.submit(load, p) for p in chunk])
        if len(queue) > ahead:
            yield torch.stack([f.result() for f in queue.popleft()])
    while queue:
        yield torch.stack([f.result() for f in queue.popleft()])


def _torch_infer(v: Variant) -> tuple[Callable[[Any], np.ndarray], float]:
    """(batch -> fine scores, weights size in MB) for the PyTorch runtimes."""
    import torch

    from ..models.bundle import WEIGHTS, load_bundle
    from ..models.inference import head_probabilities

    device = torch.device(v.device)
    net, _ = load_bundle(v.bundle, device)
    net = net.float().eval()
    size = (Path(v.bundle) / WEIGHTS).stat().st_size / 1e6
    channels_last = v.runtime != "baseline"
    if v.runtime == "torch-dynamic-int8":
        from .quantize import quantize_dynamic_linear

        net, saved = quantize_dynamic_linear(net)
        size -= saved / 1e6
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    compiled = None
    if v.runtime == "torch-compile":
        # one graph per shape (dynamic=False): batches of 1 (latency) and of the batch size; a short last
        # batch is padded up to the batch size rather than compiled again while being timed
        compiled = torch.compile(lambda x: head_probabilities(net, x)["fine"], dynamic=False,
                                 mode="reduce-overhead" if device.type == "cuda" else None)
    seen = [0]

    def run(x: Any) -> np.ndarray:  # .cpu() waits for the GPU: the timings include the whole round trip
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if compiled is not None:
            n = x.shape[0]
            seen[0] = max(seen[0], n)
            if 1 < n < seen[0]:
                x = torch.cat([x, x.new_zeros((seen[0] - n, *x.shape[1:]))]).contiguous(
                    memory_format=torch.channels_last)
            with torch.no_grad():
                return compiled(x)[:n].float().cpu().numpy()
        with torch.no_grad():
            if v.runtime == "torch-bf16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    return head_probabilities(net, x)["fine"].float().cpu().numpy()
            return head_probabilities(net, x)["fine"].float().cpu().numpy()

    return run, size


def _onnx_infer(v: Variant, threads: int) -> tuple[Callable[[Any], np.ndarray], float]:
    from .onnx import OnnxRunner

    if not v.model_file:
        raise ValueError(f"{v.name}: an ONNX runtime needs its .onnx file")
    runner = OnnxRunner(v.model_file, threads=threads, device=v.device)

    def run(x: Any) -> np.ndarray:
        return runner.session.run(["fine"], {"image": x.numpy().astype(np.float32)})[0]

    return run, Path(v.model_file).stat().st_size / 1e6


def _tflite_infer(v: Variant, threads: int) -> tuple[Callable[[Any], np.ndarray], float]:
    from ..models.tflite_runtime import TfliteRunner

    if not v.model_file:
        raise ValueError(f"{v.name}: a LiteRT runtime needs its .tflite file")
    runner = TfliteRunner(v.model_file, threads=threads)

    def run(x: Any) -> np.ndarray:
        return runner.run_batch(x.numpy())["fine"]

    return run, Path(v.model_file).stat().st_size / 1e6


def _infer(v: Variant, threads: int) -> tuple[Callable[[Any], np.ndarray], float]:
    if v.runtime.startswith("onnx"):
        return _onnx_infer(v, threads)
    if v.runtime.startswith("tflite"):
        return _tflite_infer(v, threads)
    return _torch_infer(v)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage: ru_maxrss survives exec, so a child
    would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the best there is


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (None: left as they are) for the block, restored after."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_variant(v: Variant, paths: Sequence[str], labels: Sequence[str], *, threads: int, workers: int,
                    batch_size: int, latency_images: int = 50, repeats: int = 1, warmup: int = 3) -> BenchRow:
    """One variant, end to end, in the calling process (its torch thread count is restored after).

    Throughput is the median of `repeats` passes over all images (a shared machine's hiccups hit one
    pass, not the median); top-1 comes from the first pass.
    """
    import torch

    from ..models.bundle import read_card

    with _torch_threads(threads):
        card = read_card(v.bundle)
        naive = v.runtime == "baseline"
        load = _naive_loader(card) if naive else _fast_loader(card)
        infer, size = _infer(v, threads)
        bs = BASELINE_BATCH if naive else batch_size
        for p in list(paths[:warmup]):  # warm-up: allocators, kernels, thread pools
            infer(load(p).unsqueeze(0))
        infer(torch.stack([load(p) for p in paths[: min(bs, len(paths))]]))
        walls, pred = _timed_passes(paths, load, infer, bs, None if naive else workers, repeats)
        lat = []
        for i in range(latency_images):
            t = time.perf_counter()
            infer(load(paths[i % len(paths)]).unsqueeze(0)).argmax(1)
            lat.append((time.perf_counter() - t) * 1000)
    top1 = float(np.mean([card.classes[int(i)] == lab for i, lab in zip(pred, labels, strict=True)]))
    return BenchRow(v.name, v.runtime, card.backbone, top1, len(paths), round(size, 2),
                    float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                    len(paths) / float(np.median(walls)), round(_peak_rss_mb(), 1))


def _timed_passes(paths: Sequence[str], load: Callable[[str], Any], infer: Callable[[Any], np.ndarray],
                  batch_size: int, workers: int | None, repeats: int) -> tuple[list[float], np.ndarray]:
    """Wall times of `repeats` passes over `paths` (decode workers if given) and the first pass's classes."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers)) if workers else None
    walls, first = [], None
    try:
        for _ in range(max(1, repeats)):
            preds = []
            t0 = time.perf_counter()
            for x in _batches(paths, load, batch_size, pool):
                preds.append(infer(x).argmax(1))
            walls.append(time.perf_counter() - t0)
            first = np.concatenate(preds) if first is None else first
    finally:
        if pool is not None:
            pool.shutdown()
    return walls, first


def _measure_isolated(v: Variant, paths: Sequence[str], labels: Sequence[str], kwargs: dict[str, Any]
                      ) -> BenchRow:
    """measure_variant in a fresh Python process (JSON in and out): its own peak memory, nothing warm
    from other variants, and no re-import of the caller's __main__ (unlike multiprocessing's spawn)."""
    import json
    import subprocess
    import sys

    job = json.dumps({"variant": asdict(v), "paths": list(paths), "labels": list(labels), "kwargs": kwargs})
    proc = subprocess.run([sys.executable, "-c", "from skulens.deploy.bench import _child; _child()"],
                          input=job, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{v.name}: the benchmark process failed:\n{proc.stderr[-3000:]}")
    return BenchRow(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _child() -> None:
    import json
    import sys

    job = json.loads(sys.stdin.read())
    row = measure_variant(Variant(**job["variant"]), job["paths"], job["labels"], **job["kwargs"])
    print(json.dumps(asdict(row)))


def run_bench(variants: Sequence[Variant], paths: Sequence[str], labels: Sequence[str], *,
              device: str = "cpu", threads: int | None = None, workers: int | None = None, batch_size: int = 32,
              latency_images: int = 50, repeats: int = 1, isolate: bool = True, split: str = "val",
              progress: bool = True, settings: dict[str, Any] | None = None) -> BenchResult:
    """Measure every variant on the same images; the first "baseline" variant is the reference."""
    if not any(v.runtime == "baseline" for v in variants):
        raise ValueError("the variants need a 'baseline' to compare against")
    unknown = sorted({v.runtime for v in variants} - set(RUNTIMES))
    if unknown:
        raise ValueError(f"unknown runtime(s) {', '.join(unknown)}: {', '.join(RUNTIMES)}")
    threads = threads or os.cpu_count() or 1
    workers = workers or threads
    variants = [replace(v, device=device) for v in variants]
    kwargs = {"threads": threads, "workers": workers, "batch_size": batch_size,
              "latency_images": latency_images, "repeats": repeats}
    rows = []
    for v in variants:
        t = time.perf_counter()
        if isolate:
            row = _measure_isolated(v, paths, labels, kwargs)
        else:
            row = measure_variant(v, paths, labels, **kwargs)
        rows.append(row)
        if progress:
            print(f"  {v.name}: top-1 {100 * row.top1:.1f}, {row.throughput_ips:.1f} img/s, p50 "
                  f"{row.latency_p50_ms:.1f} ms ({time.perf_counter() - t:.0f} s)", flush=True)
    base = next(r for r in rows if r.runtime == "baseline")
    rows = [replace(r, speedup=r.throughput_ips / base.throughput_ips, top1_delta=100 * (r.top1 - base.top1))
            for r in rows]
    return BenchResult(tuple(rows), split, len(paths), threads, workers, batch_size, isolate,
                       {**(settings or {}), **kwargs, "device": device})


# ------------------------------------------------------------------------------------------ orchestration


def _onnx_files(bundle: str, work: Path, int8: bool, calibration: Sequence[Path]) -> tuple[Path, Path | None]:
    """Export the bundle (and an int8 copy calibrated on `calibration` photos) into `work`."""
    from .onnx import export_onnx
    from .quantize import quantize_onnx_with_photos

    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(bundle, work / "model.onnx")
    q = quantize_onnx_with_photos(fp32, calibration, work / "model.int8.onnx") if int8 else None
    return fp32, q


def _tflite_files(bundle: str, work: Path, int8: bool, calibration: Sequence[Path]) -> tuple[Path, Path | None]:
    """Export the bundle to LiteRT (and an int8 copy calibrated on `calibration` photos) into `work`."""
    from .tflite import export_tflite, quantize_tflite_with_photos

    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_tflite(bundle, work / "model.tflite")
    q = quantize_tflite_with_photos(fp32, calibration, work / "model.int8.tflite") if int8 else None
    return fp32, q


def _readable(paths: list[str], labels: list[str], size: int) -> tuple[list[str], list[str]]:
    """The photos every variant can decode (each measured variant reads them its own way and stopped the whole
    benchmark at one unreadable file); the others are left out, and said so, as `evaluate` does."""
    from ..data.catalogue import CatalogueError
    from ..data.decode import ImageDecodeError, decode_image

    kept, bad = [], []
    for i, path in enumerate(paths):
        try:
            decode_image(path, reduce_to=size)
            kept.append(i)
        except ImageDecodeError as exc:
            bad.append(f"{path} ({exc.reason})")
    if bad:
        log.warning("bench: %d unreadable photo(s) left out, e.g. %s", len(bad), bad[0])
    if not kept:
        raise CatalogueError("bench: none of the split's photos can be read")
    return [paths[i] for i in kept], [labels[i] for i in kept]


def bench_bundle(bundle: str | os.PathLike, data: str | os.PathLike, *, out: str | os.PathLike,
                 split: str = "val", runtimes: Sequence[str] = DEFAULT_RUNTIMES,
                 extra: dict[str, str] | None = None,
                 extra_runtimes: Sequence[str] = ("torch-bf16", "onnx-fp32"), fast: str | os.PathLike | None = None,
                 limit: int | None = None, calibration_images: int = 256, **kwargs: Any) -> BenchResult:
    """Export what the runtimes need into `out`, then measure the bundle (and `extra` bundles, e.g.
    {"distilled": path, "pruned": path}) on `split` of the catalogue `data`; writes bench.json/bench.md.
    `fast`: a folder made by `skulens export --preset fast`, measured as it is (its model.int8.onnx, and its
    model.int8.tflite when `skulens export --format tflite --int8` wrote one there)."""
    import json
    import random

    from ..evaluate.heldout import card_catalogue
    from ..models.bundle import read_card
    from .quantize import calibration_sample

    out_dir = Path(out)
    card = read_card(bundle)
    cat = card_catalogue(data, card)  # a generated val is the one the training run held out
    samples = list(cat.split(split))
    if limit:
        random.Random(0).shuffle(samples)
        samples = samples[:limit]
    paths, labels = _readable([str(s.path) for s in samples], [s.label for s in samples], card.resize_to)
    calib = calibration_sample(data, split="train", images=calibration_images, card=card)

    variants: list[Variant] = []
    todo = [("default", str(bundle), list(runtimes))]
    extra_rts = [r for r in extra_runtimes if r != "baseline"]
    todo += [(name, str(b), extra_rts) for name, b in (extra or {}).items()]
    for name, b, rts in todo:
        files: dict[str, Path | None] = {}
        if any(r.startswith("onnx") for r in rts):
            files["onnx-fp32"], files["onnx-int8"] = _onnx_files(b, out_dir / "models" / name, "onnx-int8" in rts,
                                                                 calib)
        if any(r.startswith("tflite") for r in rts):
            files["tflite-fp32"], files["tflite-int8"] = _tflite_files(b, out_dir / "models" / name,
                                                                       "tflite-int8" in rts, calib)
        for r in rts:
            file = files.get(r)
            variants.append(Variant(f"{name} ({r})", r, b, str(file) if file else None))
    if fast is not None:
        from ..models.onnx_runtime import ONNX_INT8_NAME

        file = Path(fast) / ONNX_INT8_NAME
        if not file.is_file():
            raise FileNotFoundError(f"{fast}: no {ONNX_INT8_NAME}; make it with `skulens export --model BUNDLE "
                                    f"--preset fast --out {fast}`")
        variants.append(Variant("fast (onnx-int8)", "onnx-int8", str(fast), str(file)))
        from ..models.tflite_runtime import TFLITE_INT8_NAME, require_tflite

        lite = Path(fast) / TFLITE_INT8_NAME  # `skulens export -m FAST --format tflite --int8 [--qat]` put it there
        if lite.is_file():
            try:
                require_tflite()
            except ImportError as e:
                log.warning("%s: not measured: %s", lite, e)
            else:
                variants.append(Variant("fast (tflite-int8)", "tflite-int8", str(fast), str(lite)))
    settings = {"bundle": str(bundle), "data": str(data), "limit": limit, "extra": extra or {},
                "fast": None if fast is None else str(fast),
                "calibration_images": len(calib)}
    result = run_bench(variants, paths, labels, split=split, settings=settings, **kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    (out_dir / "bench.md").write_text(to_markdown(result), encoding="utf-8")
    return result


def to_markdown(result: BenchResult) -> str:
    """The results table (speed-up and top-1 change against the baseline row) and the goal verdict."""
    header = ("| variant | what runs | top-1 | Δ top-1 (pts) | size MB | latency p50 / p99 ms | images/s "
              "| speed-up | peak RSS MB |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r.name} | {r.description} | {100 * r.top1:.1f} | {r.top1_delta:+.1f} "
                     f"| {r.size_mb:.1f} | {r.latency_p50_ms:.1f} / {r.latency_p99_ms:.1f} "
                     f"| {r.throughput_ips:.1f} | {r.speedup:.2f}x | {r.peak_rss_mb:.0f} |")
    goal = result.goal()
    verdict = (f"Goal (>= 4x the baseline's end-to-end throughput at <= 1 point top-1 loss): met by "
               f"{goal.name}, {goal.speedup:.2f}x at {goal.top1_delta:+.1f} points." if goal else
               "Goal (>= 4x the baseline's end-to-end throughput at <= 1 point top-1 loss): NOT met.")
    ref = result.reference()
    if ref is not None:
        fast = result.goal(10.0, 1.0, against=ref)
        best = max(result.rows, key=lambda r: r.throughput_ips)
        text = "Goal (>= 10x the baseline at <= 1 point below the default model's own fp32 top-1, " \
               f"{ref.name} {100 * ref.top1:.1f}): "
        verdict += "\n" + text + (
            f"met by {fast.name}, {fast.speedup:.2f}x at {100 * (fast.top1 - ref.top1):+.1f} points." if fast else
            f"NOT met (fastest: {best.name}, {best.speedup:.2f}x at {100 * (best.top1 - ref.top1):+.1f} points).")
    memo = "one fresh process per variant" if result.isolated else "one process for all variants (cumulative)"
    device = result.settings.get("device", "cpu")
    intro = (f"{result.n_images} images ({result.split}) on {device}; {result.threads} inference threads, "
             f"{result.workers} decode workers, batch {result.batch_size} (baseline {BASELINE_BATCH}); "
             f"peak RSS: {memo}.")
    return "\n".join([intro, "", *lines, "", verdict, ""])


@dataclass(frozen=True)
class DetectionRow:
    """End-to-end shelf-photo throughput: JPEG bytes -> decode -> detect -> classify every box."""

    name: str
    seconds_per_photo: float
    photos_per_s: float
    boxes_per_photo: float
    megapixels: float


def one_megapixel_jpegs(paths: Sequence[str], n: int, size: tuple[int, int] = (1155, 866)) -> list[bytes]:
    """`n` photos scaled to about one megapixel and encoded as JPEG (quality 90), as phones upload them."""
    import io

    from ..data.decode import decode_image

    out = []
    for p in list(paths)[:n]:
        buf = io.BytesIO()
        decode_image(p).resize(size).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench_detection(detector: str | os.PathLike, photos: Sequence[bytes], *, model: Any = None,
                    repeats: int = 2, threads: int | None = None) -> list[DetectionRow]:
    """Photos/s end to end for the detector under PyTorch and, when it has been exported
    (`skulens detect export`), under ONNX Runtime, each after one warm-up photo; median of `repeats`.
    `threads`: inference threads of both runtimes (and of the per-box classifier), as the classifier rows use;
    default the libraries' own."""
    import statistics

    from ..data.decode import decode_image
    from ..detect.count import count_products
    from ..detect.detector import load_detector
    from ..detect.model import DETECTOR_ONNX
    from ..detect.onnx import load_onnx_detector

    if not photos:
        raise ValueError("bench_detection needs at least one photo")
    variants = [("detector (PyTorch)", load_detector(detector, device="cpu"))]
    if (Path(detector) / DETECTOR_ONNX).is_file():
        variants.append(("detector (ONNX Runtime)", load_onnx_detector(detector, threads=threads)))
    mp = statistics.mean(w * h for w, h in (decode_image(p).size for p in photos[:3])) / 1e6
    rows = []
    with _torch_threads(threads):
        for name, det in variants:
            list(count_products(det, photos[:1], model=model))
            times, boxes = [], 0.0
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                results = [r for r, _ in count_products(det, photos, model=model)]
                times.append((time.perf_counter() - t0) / len(photos))
                boxes = sum(r.total for r in results) / len(results)
            sec = statistics.median(times)
            label = name + (" + classifier per box" if model is not None else "")
            rows.append(DetectionRow(label, sec, 1 / sec, boxes, mp))
    return rows


def write_detection_rows(out_dir: str | os.PathLike, rows: Sequence[DetectionRow]) -> str:
    """Add the detection rows to a bench run's files: `detection` in bench.json, their table at the end of
    bench.md (they were in the markdown only). Returns the table."""
    import json

    out = Path(out_dir)
    table = detection_markdown(rows)
    result = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    result["detection"] = [asdict(r) for r in rows]
    (out / "bench.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    with open(out / "bench.md", "a", encoding="utf-8") as f:
        f.write("\n" + table)
    return table


def detection_markdown(rows: Sequence[DetectionRow]) -> str:
    lines = ["| detection variant | s / photo | photos / s | boxes / photo | MP |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.seconds_per_photo:.2f} | {r.photos_per_s:.2f} | {r.boxes_per_photo:.1f} | "
              f"{r.megapixels:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"
