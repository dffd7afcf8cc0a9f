"""Quantization-aware fine-tuning (deploy.qat): the BatchNorm fold keeps the outputs, the tuned weights lie on the
int8 grid, the tuned model's int8 weights follow the fp32 model more closely than plain rounding does, and the
CLI's --qat is refused where it would do nothing."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from skulens.deploy.qat import PerChannelInt8, fold_batchnorm, qat_bundle, qat_finetune
from skulens.models.bundle import load_bundle


def _batches(card, catalogue: Path, n: int = 4, split: str = "train") -> list[torch.Tensor]:
    from skulens.data.catalogue import load_catalogue
    from skulens.data.splits import prepare_split
    from skulens.data.transforms import create_transform

    split = prepare_split(list(load_catalogue(catalogue).split(split)), card, desc="t", progress=False)
    tf = create_transform(card)
    x = torch.stack([tf(im) for im in split.images])
    return [x[i::n] for i in range(n)]


def _rounded(model: nn.Module) -> nn.Module:
    """`model` with its BatchNorm folded and every backbone conv weight rounded to int8 (plain post-training)."""
    m = copy.deepcopy(model).eval()
    fold_batchnorm(m.backbone)
    with torch.no_grad():
        for conv in m.backbone.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.copy_(PerChannelInt8()(conv.weight))
    return m


def test_folding_batchnorm_keeps_the_outputs(tiny_bundle, tiny_catalogue: Path) -> None:
    model, card = load_bundle(tiny_bundle.bundle)
    model.eval()
    x = torch.cat(_batches(card, tiny_catalogue))
    with torch.no_grad():
        before = model(x)["fine"]
        folded = copy.deepcopy(model)
        convs = fold_batchnorm(folded.backbone)
        after = folded(x)["fine"]
    assert len(convs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules()) > 20
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    bn = next(m for m in folded.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.all(bn.weight == 1) and torch.all(bn.running_mean == 0)


def test_an_empty_loader_is_refused() -> None:
    net = nn.Module()
    net.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.raises(ValueError, match="no batches"):
        qat_finetune(net, [], steps=3)


def test_fold_refuses_a_batchnorm_without_its_convolution() -> None:
    with pytest.raises(ValueError, match="cannot fold"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5)))


def test_a_conv_bias_joins_the_folded_shift() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)).eval()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net[1].weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = net(x)
        fold_batchnorm(net)
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_qat_weights_sit_on_the_int8_grid_and_follow_fp32_closer_than_rounding(tiny_bundle, tiny_catalogue) -> None:
    model, card = load_bundle(tiny_bundle.bundle)
    model.eval()
    batches = _batches(card, tiny_catalogue)
    x = torch.cat(batches)
    tuned, convs, diff = qat_finetune(model, batches, steps=24, lr=1e-5, check=x[:4])
    assert convs == sum(isinstance(m, nn.Conv2d) for m in model.backbone.modules()) and diff < 1e-4
    for conv in tuned.backbone.modules():
        if isinstance(conv, nn.Conv2d):
            w = conv.weight.flatten(1)
            levels = w / (w.abs().amax(1, keepdim=True) / 127).clamp_min(1e-12)
            assert torch.allclose(levels, levels.round(), atol=1e-3), "a tuned weight is off the int8 grid"
    assert not any(p.requires_grad for p in tuned.parameters())
    held = torch.cat(_batches(card, tiny_catalogue, split="val"))  # photos the fine-tune did not see
    with torch.no_grad():
        ref = model(held)["fine"]
        plain = (_rounded(model)(held)["fine"] - ref).pow(2).mean()
        qat = (tuned(held)["fine"] - ref).pow(2).mean()
    assert qat < 0.6 * plain, (float(qat), float(plain))  # measured 0.04 vs 0.10 (0.009 on the tuned photos)
    # the heads are untouched: they stay float in the int8 files
    torch.testing.assert_close(tuned.head.weight, model.head.weight)


def test_qat_bundle_writes_a_loadable_bundle(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.data.catalogue import load_catalogue

    samples = list(load_catalogue(tiny_catalogue).split("train"))
    res = qat_bundle(tiny_bundle.bundle, tmp_path / "qat", samples, epochs=1, batch_size=8)
    assert res.steps == len(samples) // 8 and res.convolutions > 20
    tuned, card = load_bundle(res.out)
    original, original_card = load_bundle(tiny_bundle.bundle)
    assert card == original_card
    rounded = _rounded(original)  # folded and rounded, not tuned: the fine-tune moved weights beyond that
    moved = [not torch.equal(a.weight, b.weight) for a, b in zip(
        (m for m in tuned.backbone.modules() if isinstance(m, nn.Conv2d)),
        (m for m in rounded.backbone.modules() if isinstance(m, nn.Conv2d)), strict=True)]
    assert sum(moved) > len(moved) // 2
    with pytest.raises(ValueError, match="needs photos"):
        qat_bundle(tiny_bundle.bundle, tmp_path / "none", [])
    with pytest.raises(ValueError, match="epochs must be > 0"):
        qat_bundle(tiny_bundle.bundle, tmp_path / "none", samples, epochs=0)


@pytest.mark.parametrize("args", [["--qat"], ["--qat", "--int8"], ["--qat", "--format", "tflite"],
                                  ["--qat", "--preset", "fast"]])
def test_cli_refuses_qat_where_it_would_do_nothing(tiny_bundle, args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "skulens.cli", "export", "-m", str(tiny_bundle.bundle), *args],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "--qat" in r.stderr and "--format tflite --int8" in r.stderr
