"""Training augmentation presets: the "robust" one degrades a share of the photos as real phone photos are."""

from __future__ import annotations

import pytest
import torch

from skulens.data.transforms import create_transform
from skulens.models.card import ModelCard


def _card(size: int = 64) -> ModelCard:
    return ModelCard(backbone="efficientnet_lite0", input_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                     crop_pct=1.0, classes=("a", "b"), embedding_dim=8)


def test_robust_adds_noise_to_about_a_fifth_of_the_photos() -> None:
    tf = create_transform(_card(), train=True, augment="robust")
    flat = torch.full((3, 80, 80), 128, dtype=torch.uint8)  # jitter, JPEG, crops and blur leave it flat
    torch.manual_seed(0)
    outs = [tf(flat) for _ in range(300)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 and torch.isfinite(o).all() for o in outs)
    noisy = sum(float(o.std()) > 0.02 for o in outs)
    assert 30 <= noisy <= 95, noisy  # p = 0.2 of 300: 60 expected
    light = create_transform(_card(), train=True, augment="light")
    assert all(float(light(flat).std()) < 0.02 for _ in range(50))  # the light preset never adds noise


def test_robust_blurs_some_photos_where_light_never_does() -> None:
    stripes = torch.zeros((3, 256, 256), dtype=torch.uint8)
    stripes[:, :, (torch.arange(256) // 4) % 2 == 0] = 255  # 4 px stripes: crops and resizes keep them

    def edge_contrast(preset: str) -> list[float]:
        tf = create_transform(_card(224), train=True, augment=preset)
        torch.manual_seed(2)
        return [float((o[:, :, 1:] - o[:, :, :-1]).abs().mean()) for o in (tf(stripes) for _ in range(150))]

    light, robust = edge_contrast("light"), edge_contrast("robust")
    floor = min(light)  # the softest a crop + resize + colour jitter leaves the stripes
    blurred = sum(c < 0.5 * floor for c in robust)
    assert floor > 0.2 and 10 <= blurred <= 60, (floor, blurred)  # blur on p = 0.2 of 150: 30 expected


def test_unknown_preset_names_the_presets() -> None:
    with pytest.raises(ValueError, match="none, light, strong or robust"):
        create_transform(_card(), train=True, augment="heavy")


def test_training_runs_with_the_robust_preset(tiny_catalogue, tmp_path) -> None:
    import skulens
    from conftest import TINY

    res = skulens.train(tiny_catalogue, out=str(tmp_path / "run"), progress=False, augment="robust",
                        max_steps=2, **{k: v for k, v in TINY.items()})
    assert res.card.train_config["augment"] == "robust" and (res.bundle / "model.safetensors").is_file()


def test_random_jpeg_compresses_at_a_random_quality() -> None:
    from skulens.data.transforms import RandomJpeg

    g = torch.Generator().manual_seed(0)
    img = (torch.rand((3, 48, 48), generator=g) * 255).to(torch.uint8)  # noise: JPEG cannot keep it
    torch.manual_seed(0)
    outs = [RandomJpeg((10, 60))(img) for _ in range(5)]
    assert all(o.shape == img.shape and o.dtype == torch.uint8 for o in outs)
    errors = [float((o.float() - img.float()).abs().mean()) for o in outs]
    assert min(errors) > 5 and len({round(e, 3) for e in errors}) > 1  # lossy, and not always the same quality
