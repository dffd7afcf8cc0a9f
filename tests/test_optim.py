"""The optimizer's parameter groups (weight decay, learning rates) and when fp16 loss scaling is on."""

from __future__ import annotations

import pytest
import torch

from skulens.config import resolve_config
from skulens.models.backbones import create_backbone
from skulens.models.classifier import SkuModel
from skulens.train.optim import fp16_training, make_grad_scaler, make_optimizer, param_groups


@pytest.fixture(scope="module")
def model() -> SkuModel:
    torch.manual_seed(0)
    return SkuModel(create_backbone("efficientnet_lite0", image_size=64), 3, 2, 4, 0.2)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_norms_and_biases_are_not_decayed_and_lrs_are_kept(model: SkuModel, optimizer: str) -> None:
    cfg = resolve_config({"optimizer": optimizer, "lr": 0.01, "backbone_lr_mult": 0.25, "weight_decay": 0.05})
    opt, _ = make_optimizer(cfg, model, 10)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    backbone = {id(p) for p in model.backbone.parameters()}
    heads = {id(p) for h in model.heads() for p in h.parameters()}
    assert set(group_of) == backbone | heads  # every trainable parameter, each once
    assert sum(len(g["params"]) for g in opt.param_groups) == len(group_of)
    for name, p in model.named_parameters():
        if id(p) not in group_of:
            continue
        g = group_of[id(p)]
        if p.ndim == 1:  # norm weights and biases
            assert g["weight_decay"] == 0, name
        else:  # conv and linear weights
            assert p.ndim in (2, 4) and g["weight_decay"] == pytest.approx(0.05), name
        assert g["initial_lr"] == pytest.approx(0.0025 if id(p) in backbone else 0.01), name  # before warmup
    # The first group is the backbone's, the second the heads': the LR log and the schedule tests read them.
    assert [g["initial_lr"] for g in opt.param_groups[:2]] == pytest.approx([0.0025, 0.01])


def test_one_cycle_keeps_sgds_momentum(model: SkuModel) -> None:
    """OneCycleLR's momentum cycle (0.95 -> 0.85 -> 0.95) overrode --momentum 0.5 at every step."""
    for schedule in ("cosine", "onecycle"):
        cfg = resolve_config({"optimizer": "sgd", "momentum": 0.5, "schedule": schedule, "epochs": 2})
        opt, sched = make_optimizer(cfg, model, 10)
        seen = []
        for _ in range(10):
            seen.append(opt.param_groups[0]["momentum"])
            opt.step()
            sched.step()
        assert seen == [0.5] * 10, (schedule, seen)
    opt, sched = make_optimizer(resolve_config({"schedule": "onecycle", "epochs": 2}), model, 10)
    betas = []
    for _ in range(10):
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert min(betas) < max(betas)  # AdamW's beta1 still cycles, as the one-cycle policy has it


def test_settings_that_cannot_work_are_refused() -> None:
    from skulens.config import ConfigError

    for bad, match in (({"optimizer": "sgd", "momentum": 1.0}, r"outside \[0, 1\)"),
                       ({"freeze": "gradual", "gradual_head_epochs": -1}, "gradual_head_epochs: must be >= 0")):
        with pytest.raises(ConfigError, match=match):
            resolve_config(bad)


def test_frozen_parameters_are_still_in_the_optimizer(model: SkuModel) -> None:
    # `gradual` unfreezes the backbone after the first epoch: its parameters must already be listed.
    stem = model.backbone.body.conv_stem.weight
    stem.requires_grad_(False)
    try:
        groups = param_groups(resolve_config(), model)
    finally:
        stem.requires_grad_(True)
    assert any(p is stem for g in groups for p in g["params"])


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")  # the decision is tested, not run, on a CPU
def test_loss_scaling_is_on_exactly_for_fp16_training(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    for precision in ("auto", "bf16", "off"):
        assert not fp16_training(cpu, precision)
        assert not make_grad_scaler(cpu, precision).is_enabled()
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4 or V100
    assert fp16_training(cuda, "auto") and fp16_training(cuda, "fp16")
    assert not fp16_training(cuda, "bf16") and not fp16_training(cuda, "off")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # Ampere and later
    assert not fp16_training(cuda, "auto") and fp16_training(cuda, "fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_fp16_scaler_on_the_gpu() -> None:
    assert make_grad_scaler(torch.device("cuda"), "fp16").is_enabled()
    assert not make_grad_scaler(torch.device("cuda"), "off").is_enabled()


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_warmup_then_cosine_or_constant_by_hand(model: SkuModel, schedule: str) -> None:
    """5 epochs, 1 of warm-up, 25 steps: a linear ramp from 1 % of the rate over the first 5 steps, then a half
    cosine from the rate down to 1 % at step 25 that stays there (or the rate itself, constant)."""
    cfg = resolve_config({"schedule": schedule, "epochs": 5, "warmup_epochs": 1, "lr": 0.01})
    opt, sched = make_optimizer(cfg, model, 25)
    factors = []
    for _ in range(30):
        factors.append(opt.param_groups[0]["lr"] / opt.param_groups[0]["initial_lr"])
        opt.step()
        sched.step()
    assert factors[:6] == pytest.approx([0.01, 0.208, 0.406, 0.604, 0.802, 1.0])
    if schedule == "cosine":
        assert factors[15] == pytest.approx(0.505)  # half way through the decay
        assert factors[25:] == pytest.approx([0.01] * 5)  # past the planned steps: never climbs back
        assert factors[5:] == sorted(factors[5:], reverse=True)  # never rises
    else:
        assert factors[5:] == pytest.approx([1.0] * 25)
