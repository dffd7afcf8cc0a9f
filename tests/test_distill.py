"""Distillation: the loss against a hand computation, a frozen teacher, and a run through the engine."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import skulens
from skulens.cli import main
from skulens.config import ConfigError
from skulens.models.card import ModelCard
from skulens.train.teacher import Teacher, distillation_loss, load_teacher


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_distillation_loss_equals_a_hand_computed_value() -> None:
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [0.5, 0.5, 2.0]]
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        ps, pt = _softmax(s_row, t), _softmax(t_row, t)
        expected += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    expected = expected / 2 * t * t  # batch mean, times T^2
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    same = distillation_loss(torch.tensor(teacher), torch.tensor(teacher), t)
    assert same.item() == pytest.approx(0, abs=1e-6)


class _Fixed(nn.Module):
    """A 'network' whose fine logits are a fixed function of the input's first pixel values."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -1.0, 2.0]))
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fine": x[:, 0, 0, :3] * self.w}


def _card(classes: tuple[str, ...]) -> ModelCard:
    return ModelCard("efficientnet_lite0", 4, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.875, classes, 8)


def test_blend_reorders_teacher_classes_and_mixes_with_alpha() -> None:
    teacher_card, student_card = _card(("c", "a", "b")), _card(("a", "b", "c"))
    teacher = Teacher(_Fixed(), teacher_card, student_card, torch.device("cpu"), temperature=3.0, alpha=0.25,
                      precision="off")
    x = torch.randn(2, 3, 4, 4)
    raw = x[:, 0, 0, :3] * torch.tensor([1.0, -1.0, 2.0])  # teacher order c, a, b
    assert torch.allclose(teacher.logits(x), raw[:, [1, 2, 0]])  # student order a, b, c
    student_logits = torch.randn(2, 3, requires_grad=True)
    ce = torch.tensor(1.7)
    loss = teacher.blend(ce, student_logits, x)
    expected = 0.25 * distillation_loss(student_logits, raw[:, [1, 2, 0]], 3.0) + 0.75 * ce
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_teacher_must_know_every_student_class() -> None:
    with pytest.raises(ConfigError, match="zebra"):
        Teacher(_Fixed(), _card(("a", "b", "c")), _card(("a", "zebra", "c")), torch.device("cpu"),
                temperature=2, alpha=0.5)


def test_teacher_is_frozen_and_stays_in_eval_mode(tiny_bundle) -> None:
    card = tiny_bundle.card
    teacher = load_teacher(str(tiny_bundle.bundle), card, torch.device("cpu"), temperature=4.0, alpha=0.7,
                           precision="off")
    before = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    assert not any(p.requires_grad for p in teacher.net.parameters())
    teacher.net.train()  # something switching it to training mode must not change its outputs
    x = torch.randn(4, 3, 64, 64)
    student = nn.Linear(3, card.num_classes)
    logits = student(x.mean(dim=(2, 3)))
    loss = teacher.blend(torch.tensor(0.0), logits, x)
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert not teacher.net.training
    assert all(p.grad is None for p in teacher.net.parameters())
    after = teacher.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats included


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_distill_command_trains_through_the_engine(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    teacher = Path(tiny_bundle.bundle)
    digest = _sha(teacher / "model.safetensors")
    out = tmp_path / "student"
    rc = main(["distill", "--teacher", str(teacher), "--student", "efficientnet_lite0", "--data",
               str(tiny_catalogue), "--out", str(out), "--image-size", "64", "--train-image-size", "64",
               "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--no-ema", "--no-baseline",
               "--loggers", "", "--distill-temperature", "3", "--distill-alpha", "0.6", "-q"])
    assert rc == 0
    card = json.loads((out / "bundle" / "card.json").read_text())
    assert card["lineage"]["teacher"]["bundle"] == str(teacher)
    assert card["lineage"]["teacher"]["temperature"] == 3.0 and card["lineage"]["teacher"]["alpha"] == 0.6
    assert card["train_config"]["teacher"] == str(teacher)
    assert _sha(teacher / "model.safetensors") == digest  # the teacher is never written to
    val = sorted(str(p) for p in tiny_catalogue.parent.rglob("val/*/*.jpg"))
    preds = skulens.load(out / "bundle").predict(val)
    assert len(preds) == 9 and all(p.level != "error" for p in preds)


DISTILL_TINY = {"image_size": 64, "train_image_size": 64, "epochs": 1, "max_steps": 2, "batch_size": 8,
                "ema": False, "baseline": False, "loggers": ""}


def test_distill_recipe_defaults_to_lite0_on_the_teachers_data(tiny_bundle, tmp_path: Path) -> None:
    from skulens.deploy.distill import distill

    teacher = Path(tiny_bundle.bundle)
    result = distill(teacher, out=str(tmp_path / "student"), progress=False, distill_alpha=0.5, **DISTILL_TINY)
    card = result.card
    assert card.backbone == "efficientnet_lite0" and card.train_config["backbone"] == "efficientnet_lite0"
    assert card.lineage["teacher"]["bundle"] == str(teacher.resolve()) and card.lineage["teacher"]["alpha"] == 0.5
    assert card.train_config["teacher"] == str(teacher)
    # No data given: the catalogue the teacher was trained on, as its card records it.
    assert card.dataset["path"] == tiny_bundle.card.dataset["path"]
    assert result.bundle == tmp_path / "student" / "bundle" and (result.bundle / "card.json").is_file()


def test_distill_recipe_student_and_data(tiny_bundle, tiny_catalogue: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    from skulens.config import ConfigError
    from skulens.deploy.distill import distill

    # `student` and a backbone override name the same thing: two different ones are refused (the backbone was
    # dropped without a word), the same one is fine
    with pytest.raises(ConfigError, match="both name the student's backbone"):
        distill(str(tiny_bundle.bundle), student="efficientnet_lite0", data=tiny_catalogue,
                out=str(tmp_path / "x"), progress=False, backbone="efficientnet_lite2", **DISTILL_TINY)
    assert not (tmp_path / "x").exists()
    with caplog.at_level("WARNING", logger="skulens"):  # a setting with no effect is said, as train says it
        result = distill(str(tiny_bundle.bundle), student="efficientnet_lite0", data=tiny_catalogue,
                         out=str(tmp_path / "s"), progress=False, backbone="efficientnet_lite0", holdout_fraction=0.2,
                         **DISTILL_TINY)
    assert "holdout_fraction 0.2 is not used" in caplog.text
    assert result.card.backbone == "efficientnet_lite0"
    assert result.card.train_config["data"] == str(tiny_catalogue)


def test_distill_recipe_keeps_the_teachers_split_unless_told(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from skulens.deploy.distill import distill

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bundle.bundle, teacher)
    card = json.loads((teacher / "card.json").read_text())
    card["train_config"].update(seed=3, val_fraction=0.5)  # as if trained with --seed 3 --val-fraction 0.5
    (teacher / "card.json").write_text(json.dumps(card))
    result = distill(str(teacher), data=tiny_catalogue, out=str(tmp_path / "s"), progress=False, seed=5,
                     **DISTILL_TINY)
    assert result.card.train_config["val_fraction"] == 0.5  # the teacher's
    assert result.card.train_config["seed"] == 5  # given


def test_distill_recipe_refuses_missing_data(tiny_bundle, tmp_path: Path) -> None:
    from skulens.data.locate import DataNotFoundError
    from skulens.deploy.distill import distill

    with pytest.raises(DataNotFoundError, match="no such file"):
        distill(tiny_bundle.bundle, data=tmp_path / "nowhere", out=str(tmp_path / "s"), progress=False)


def test_student_wins_over_a_config_files_backbone_and_conflicts_with_the_flag(tiny_bundle, tiny_catalogue: Path,
                                                                              tmp_path: Path, capsys) -> None:
    """A run's config.yaml always names a backbone: `distill --config RUN/config.yaml --student X` was refused as
    two names for the student (review of this session's change)."""
    config = tmp_path / "config.yaml"
    config.write_text("backbone: efficientnet_lite2\nepochs: 1\n", encoding="utf-8")
    base = ["distill", "--teacher", str(tiny_bundle.bundle), "--data", str(tiny_catalogue), "--image-size", "64",
            "--train-image-size", "64", "--max-steps", "2", "--batch-size", "8", "--no-ema", "--no-baseline",
            "--loggers", "", "-q"]
    assert main([*base, "--config", str(config), "--student", "efficientnet_lite0", "--out",
                 str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "bundle" / "card.json").read_text())["backbone"] == "efficientnet_lite0"
    capsys.readouterr()
    assert main([*base, "--backbone", "efficientnet_lite2", "--student", "efficientnet_lite0", "--out",
                 str(tmp_path / "t")]) == 2
    assert "both name the student's backbone" in capsys.readouterr().err and not (tmp_path / "t").exists()
