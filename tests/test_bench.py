"""Deployment benchmark: every variant measured with sane numbers, the table; dynamic int8 heads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import modules_loaded_by
from skulens.deploy.bench import (
    DEFAULT_RUNTIMES,
    BenchResult,
    Variant,
    bench_bundle,
    run_bench,
    to_markdown,
)
from skulens.deploy.quantize import quantize_dynamic_linear
from skulens.models.bundle import load_bundle
from skulens.models.inference import head_probabilities

pytest.importorskip("onnxruntime")


def _val(tiny_catalogue: Path) -> tuple[list[str], list[str]]:
    paths = sorted(tiny_catalogue.parent.rglob("val/*/*.jpg"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


@pytest.fixture(scope="module")
def result(tiny_bundle, tiny_catalogue: Path, tmp_path_factory) -> tuple[BenchResult, Path]:
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    # One thread: on a shared 2-core machine two OpenMP threads stall on each other's time slices.
    res = bench_bundle(tiny_bundle.bundle, tiny_catalogue, out=out, latency_images=4, repeats=2,
                       isolate=False, threads=1, workers=1, calibration_images=8,
                       extra={"copy": str(tiny_bundle.bundle)},
                       extra_runtimes=("torch-bf16",), progress=False)
    return res, out, threads


def test_every_variant_has_a_row_with_sane_numbers(result) -> None:
    res, _, threads = result
    names = [r.name for r in res.rows]
    assert names == [f"default ({r})" for r in DEFAULT_RUNTIMES] + ["copy (torch-bf16)"]
    assert res.n_images == 9 and res.threads == 1 and res.workers == 1 and torch.get_num_threads() == threads
    for r in res.rows:
        assert 0 <= r.top1 <= 1 and r.n_images == 9
        assert 1 < r.size_mb < 100, r
        assert 0 < r.latency_p50_ms <= r.latency_p99_ms < 60_000, r
        assert 0 < r.throughput_ips < 1e5 and r.peak_rss_mb > 50, r
        assert r.speedup == pytest.approx(r.throughput_ips / res.baseline.throughput_ips)
        assert r.top1_delta == pytest.approx(100 * (r.top1 - res.baseline.top1))
    by = {r.runtime: r for r in res.rows if r.name.startswith("default")}
    assert by["baseline"].speedup == 1.0 and by["baseline"].top1_delta == 0.0
    assert by["onnx-int8"].size_mb < 0.5 * by["onnx-fp32"].size_mb  # int8 weights
    assert by["torch-dynamic-int8"].size_mb < by["torch-fp32"].size_mb  # the heads' weights went int8
    # fp32 variants agree with each other: preprocessing is the card's, the graph the same
    assert by["torch-fp32"].top1 == by["onnx-fp32"].top1 == by["torch-bf16"].top1 >= 2 / 3


def test_markdown_and_json_are_written(result) -> None:
    res, out, _ = result
    md = (out / "bench.md").read_text()
    assert md == to_markdown(res)
    for r in res.rows:
        assert f"| {r.name} |" in md
    assert "Goal (>= 4x" in md and ("met by" in md or "NOT met" in md)
    data = json.loads((out / "bench.json").read_text())
    assert len(data["rows"]) == len(res.rows)
    assert data["rows"][0]["description"].startswith("PyTorch eager fp32")
    assert (out / "models" / "default" / "model.int8.onnx").is_file()


def test_goal_picks_the_fastest_row_within_one_point(result) -> None:
    from dataclasses import replace

    res, _, _ = result
    rows = list(res.rows)
    fast_but_wrong = replace(rows[1], name="a", speedup=9.0, throughput_ips=9e3, top1_delta=-1.5)
    fast_enough = replace(rows[2], name="b", speedup=4.5, throughput_ips=4e3, top1_delta=-0.9)
    assert replace(res, rows=(rows[0], fast_but_wrong, fast_enough)).goal().name == "b"
    assert replace(res, rows=(rows[0], fast_but_wrong)).goal() is None


def test_an_isolated_variant_runs_in_its_own_process(tiny_bundle, tiny_catalogue: Path) -> None:
    paths, labels = _val(tiny_catalogue)
    res = run_bench([Variant("b", "baseline", str(tiny_bundle.bundle))], paths, labels, latency_images=2,
                    threads=1, isolate=True, progress=False)
    assert res.isolated and res.rows[0].top1 >= 2 / 3 and res.rows[0].peak_rss_mb > 50
    with pytest.raises(ValueError, match="baseline"):
        run_bench([Variant("x", "torch-fp32", str(tiny_bundle.bundle))], paths, labels, isolate=False)


def test_dynamic_quantization_only_touches_the_linear_heads(tiny_bundle) -> None:
    net, _ = load_bundle(tiny_bundle.bundle)
    net.eval()
    q, saved = quantize_dynamic_linear(net)
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert saved == 3 * sum(m.weight.numel() for m in linear)
    assert not any(isinstance(m, nn.Linear) and type(m) is nn.Linear for m in q.modules())  # all replaced
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in q.modules()) == n_conv
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # unseeded noise near a tie flaked
    with torch.no_grad():
        a, b = head_probabilities(net, x)["fine"], head_probabilities(q, x)["fine"]
    assert torch.equal(a.argmax(1), b.argmax(1)) and (a - b).abs().max() < 0.05
    assert isinstance(net.head, nn.Linear)  # the original is left alone


def test_deploy_commands_do_not_import_torch_for_help() -> None:
    from skulens.cli import deploy as cli_deploy
    from skulens.cli import evaluate as cli_evaluate
    from skulens.evaluate.robustness import CORRUPTIONS

    # the CLI keeps its own copies of these names so that building the parser imports no torch
    assert cli_deploy.DEFAULT_RUNTIMES == DEFAULT_RUNTIMES
    assert cli_evaluate.CORRUPTION_NAMES == tuple(CORRUPTIONS)
    assert modules_loaded_by([[cmd, "--help"] for cmd in ("bench", "prune", "distill", "robustness")],
                             ("torch",)) == []


def test_the_device_is_recorded_and_onnx_without_a_cuda_provider_falls_back_to_the_cpu(
        result, tiny_bundle, tmp_path: Path, caplog) -> None:
    import onnxruntime as ort

    from skulens.deploy.onnx import OnnxRunner, export_onnx

    res, out, _ = result
    assert res.settings["device"] == "cpu" and "9 images (val) on cpu;" in (out / "bench.md").read_text()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    model = export_onnx(tiny_bundle.bundle, tmp_path / "m.onnx")
    with caplog.at_level("WARNING", logger="skulens.deploy.onnx"):
        runner = OnnxRunner(model, threads=1, device="cuda")
    assert runner.provider == "CPUExecutionProvider" and "onnxruntime-gpu" in caplog.text


def test_torch_compile_runtime_matches_eager_and_pads_a_short_batch(tiny_bundle) -> None:
    """torch-compile (inductor; ~25 s to compile the tiny model here): the same probabilities as eager fp32, and a
    short last batch padded to the batch size, not compiled again (the second call returns at once)."""
    import time

    from skulens.deploy.bench import _torch_infer

    run, _ = _torch_infer(Variant("c", "torch-compile", str(tiny_bundle.bundle)))
    eager, _ = _torch_infer(Variant("e", "torch-fp32", str(tiny_bundle.bundle)))
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(run(x), eager(x), atol=1e-5)
    t = time.perf_counter()
    short = run(x[:2])
    assert time.perf_counter() - t < 5, "a short batch was compiled again"
    assert short.shape == (2, len(load_bundle(tiny_bundle.bundle)[1].classes))
    np.testing.assert_allclose(short, eager(x[:2]), atol=1e-5)


def test_an_unreadable_photo_of_the_split_is_left_out_not_fatal(tiny_catalogue: Path, tmp_path: Path, caplog) -> None:
    """`skulens bench` stopped with a nested traceback (UnidentifiedImageError in the baseline's process) at one
    unreadable val photo; `evaluate` leaves such a photo out, and so does bench now, saying so."""
    from skulens.deploy.bench import _readable

    paths, labels = _val(tiny_catalogue)
    bad = tmp_path / "z.jpg"
    bad.write_bytes(b"bad")
    with caplog.at_level("WARNING", logger="skulens.deploy.bench"):
        kept, kept_labels = _readable([*paths, str(bad)], [*labels, "oat-milk"], 96)
    assert (kept, kept_labels) == (paths, labels)
    assert "1 unreadable photo(s) left out" in caplog.text and "z.jpg" in caplog.text
    from skulens.data.catalogue import CatalogueError

    with pytest.raises(CatalogueError, match="none of the split's photos"):
        _readable([str(bad)], ["oat-milk"], 96)
