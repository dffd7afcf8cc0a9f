"""On a CUDA device: a fine-tune learns there, and its bundle and a detector give the CPU's answers on the GPU.

Skipped without a CUDA device; `benchmarks/gpu_check.sh` runs them (`pytest -m gpu`).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_image

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def full_fp32(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """fp32 on the GPU as on the CPU: no TF32 in cuDNN convolutions or matmuls (about 1e-3 relative otherwise)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture(scope="module")
def cuda_run(tiny_catalogue: Path, tmp_path_factory: pytest.TempPathFactory):
    import skulens

    out = tmp_path_factory.mktemp("cuda") / "run"
    return skulens.train(tiny_catalogue, out=str(out), progress=False, epochs=4, lr=3e-3, device="cuda",
                         **{k: v for k, v in TINY.items() if k != "epochs"})


def test_a_fine_tune_on_cuda_learns(cuda_run) -> None:
    assert cuda_run.report.top1 >= 0.8, cuda_run.history
    assert cuda_run.epochs_run == 4


def test_the_cuda_bundle_answers_alike_on_cpu_and_gpu(cuda_run, tiny_catalogue: Path, full_fp32) -> None:
    import skulens

    files = sorted(glob.glob(str(tiny_catalogue.parent / "val" / "*" / "*.jpg")))
    cpu = skulens.load(cuda_run.bundle, device="cpu", precision="fp32").predict(files)
    gpu = skulens.load(cuda_run.bundle, device="cuda", precision="fp32").predict(files)
    assert [p.fine_label for p in gpu] == [p.fine_label for p in cpu]
    assert max(abs(a.fine_confidence - b.fine_confidence) for a, b in zip(cpu, gpu, strict=True)) < 1e-3
    bf16 = skulens.load(cuda_run.bundle, device="cuda", precision="bf16").predict(files)
    agree = np.mean([a.fine_label == b.fine_label for a, b in zip(cpu, bf16, strict=True)])
    assert agree >= 0.8, agree


def test_a_detector_counts_alike_on_cpu_and_gpu(detector: Path, full_fp32) -> None:
    import skulens

    rng = np.random.default_rng(0)
    photos = [make_image(label, rng, size=200) for label in ("red-apple", "oat-milk", "green-apple")]
    cpu = skulens.count(photos, skulens.load_detector(detector, device="cpu"), min_score=0.0)
    gpu = skulens.count(photos, skulens.load_detector(detector, device="cuda"), min_score=0.0)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.error is None and b.error is None
        assert a.total == b.total > 0
        # an untrained detector's scores lie close together, so which box ranks first may differ: compare the scores
        assert np.allclose(sorted(c.score for c in a.boxes), sorted(c.score for c in b.boxes), atol=1e-3)
