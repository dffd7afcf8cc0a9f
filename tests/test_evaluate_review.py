"""Review fixes in evaluation and the model object: the training run's val split everywhere, fuse naming a
card.json, PIL inputs under the decoding policy, ties, per-image arguments, the baseline's device."""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import skulens
from conftest import PRODUCTS, make_image, write_catalogue, write_folder_catalogue
from skulens.api import Model
from skulens.data.catalogue import load_catalogue


class _Stop(Exception):
    """Raised by a spy once it has seen what it came for."""


@pytest.fixture(scope="module")
def model(tiny_bundle) -> Model:
    return skulens.load(tiny_bundle.bundle, device="cpu", precision="off")


@pytest.fixture(scope="module")
def folder_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<class>/*.jpg: no val split and no attribute labels."""
    root = write_folder_catalogue(tmp_path_factory.mktemp("folders"), seed=1)
    assert {s.path for s in load_catalogue(root, seed=1).split("val")} != \
        {s.path for s in load_catalogue(root).split("val")}  # the seed matters on this catalogue
    return root


@pytest.fixture(scope="module")
def seed1_bundle(tiny_bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle as if trained with --seed 1."""
    bundle = tmp_path_factory.mktemp("seed1") / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    card = json.loads((bundle / "card.json").read_text())
    card["train_config"]["seed"] = 1
    (bundle / "card.json").write_text(json.dumps(card))
    return bundle


def _seed1_val(root: Path) -> list[Path]:
    return [s.path for s in load_catalogue(root, seed=1).split("val")]


# --------------------------------------------------------------------- 2, 4: the training run's val split


def test_evaluate_uses_the_cards_val_split(
        model: Model, folder_catalogue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.evaluate import evaluator

    card = model.card.with_(train_config={**model.card.train_config, "seed": 1})
    seeded = Model(model.net, card, model.device, model.precision)
    seen: list[list[Path]] = []
    real = evaluator.prepare_split

    def spy(samples, *a, **kw):
        seen.append([s.path for s in samples])
        return real(samples, *a, **kw)

    monkeypatch.setattr(evaluator, "prepare_split", spy)
    report = seeded.evaluate(folder_catalogue, split="val", progress=False)
    assert seen[0] == _seed1_val(folder_catalogue)
    assert report.n == len(seen[0])


def test_no_attribute_metrics_on_a_catalogue_without_attribute_labels(model: Model, folder_catalogue: Path,
                                                                      tiny_catalogue: Path) -> None:
    assert model.card.attributes  # the model has attributes, the catalogue none: unknown, not 0
    report = model.evaluate(folder_catalogue, split="val", progress=False)
    assert report.attribute_f1 is None and report.attribute_map is None and report.per_attribute == ()
    labelled = model.evaluate(tiny_catalogue, split="val", progress=False)
    assert labelled.attribute_f1 is not None and labelled.attribute_f1 > 0 and labelled.per_attribute


def test_robustness_uses_the_cards_val_split_and_the_seed_for_its_sample(
        seed1_bundle: Path, folder_catalogue: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.data import splits
    from skulens.evaluate.robustness import robustness_bundle

    seen: list[list[Path]] = []

    def spy(samples, *a, **kw):
        seen.append([s.path for s in samples])
        raise _Stop

    monkeypatch.setattr(splits, "prepare_split", spy)
    with pytest.raises(_Stop):
        robustness_bundle(seed1_bundle, folder_catalogue, limit=2, device="cpu", progress=False, seed=3)
    expected = _seed1_val(folder_catalogue)
    random.Random(3).shuffle(expected)
    assert seen == [expected[:2]]
    with pytest.raises(_Stop):  # no limit: the whole split, in order
        robustness_bundle(seed1_bundle, folder_catalogue, device="cpu", progress=False, seed=3)
    assert seen[1] == _seed1_val(folder_catalogue)


def test_bench_and_calibration_use_the_cards_split(seed1_bundle: Path, folder_catalogue: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.deploy import bench
    from skulens.deploy.quantize import calibration_sample
    from skulens.models.bundle import read_card

    seen: dict[str, list[str]] = {}

    def spy(variants, paths, labels, **kw):
        seen["paths"] = list(paths)
        seen["calibration"] = kw["settings"]["calibration_images"]
        raise _Stop

    monkeypatch.setattr(bench, "run_bench", spy)
    with pytest.raises(_Stop):
        bench.bench_bundle(seed1_bundle, folder_catalogue, out=tmp_path, runtimes=("baseline",), extra_runtimes=())
    assert seen["paths"] == [str(p) for p in _seed1_val(folder_catalogue)]
    train = {s.path for s in load_catalogue(folder_catalogue, seed=1).split("train")}
    assert set(calibration_sample(folder_catalogue, images=1000, card=read_card(seed1_bundle))) == train


def test_fuse_loads_the_catalogue_with_the_cards_split(seed1_bundle: Path, folder_catalogue: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from skulens.evaluate import heldout
    from skulens.evaluate.fusion import fuse_and_evaluate

    calls = []
    real = heldout.card_catalogue

    def spy(data, card):
        calls.append(card.train_config["seed"])
        cat = real(data, card)
        assert [s.path for s in cat.split("val")] == _seed1_val(folder_catalogue)
        return cat

    monkeypatch.setattr(heldout, "card_catalogue", spy)
    with pytest.raises(ValueError, match="nothing to fuse"):  # folders carry no listing text
        fuse_and_evaluate(seed1_bundle / "card.json", folder_catalogue)
    assert calls == [1]


def test_report_says_val_calibration_is_in_sample(model: Model, tiny_catalogue: Path, tmp_path: Path) -> None:
    assert model.card.metrics.get("split") == "val" and model.card.metrics.get("temperature")
    model.evaluate(tiny_catalogue, split="val", out=tmp_path / "val", progress=False)
    assert "in-sample" in (tmp_path / "val" / "report.md").read_text()
    model.evaluate(tiny_catalogue, split="train", out=tmp_path / "train", progress=False)
    assert "in-sample" not in (tmp_path / "train" / "report.md").read_text()


def test_in_sample_is_said_of_the_training_catalogue_only_and_the_numerics_are_recorded(
        model: Model, tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    """Every catalogue's val was called in-sample ("chosen on this val split of the training catalogue") - a
    model evaluated on photos it never saw, and its own report said its numbers were optimistic. A copy of the
    training catalogue elsewhere is still in-sample. The report also did not say whether it ran bf16 or fp32."""
    import json

    copy = tmp_path / "copy"
    shutil.copytree(tiny_catalogue.parent, copy)
    other = write_catalogue(tmp_path / "other", n_train=2, n_val=2, seed=7)  # the same products, other photos
    for data, name, said in ((copy / tiny_catalogue.name, "copy", True), (other, "other", False)):
        model.evaluate(data, split="val", out=tmp_path / name, progress=False)
        assert ("in-sample" in (tmp_path / name / "report.md").read_text()) is said, name
    extra = json.loads((tmp_path / "other" / "report.json").read_text())["extra"]
    assert extra["numerics"] == "pytorch fp32"  # precision off
    skulens.load(tiny_bundle.bundle, device="cpu", precision="bf16").evaluate(
        other, split="val", out=tmp_path / "bf16", progress=False)
    assert json.loads((tmp_path / "bf16" / "report.json").read_text())["extra"]["numerics"] == "pytorch bf16"
    assert "| numerics | pytorch bf16 |" in (tmp_path / "bf16" / "report.md").read_text()


def test_classes_absent_from_the_split_are_not_ranked_as_the_worst(model: Model, tmp_path: Path) -> None:
    """A split holding some of the model's classes showed the others at F1 0, at the bottom of "Per-class F1
    (worst at the bottom)" and as 0.000 rows of the table, as if the model failed on them."""
    import csv

    from conftest import write_rows

    manifest = write_catalogue(tmp_path / "cat", n_train=1, n_val=2, seed=3)
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" or r["label"] == "oat-milk"]
    write_rows(manifest, rows)
    report = model.evaluate(manifest, split="val", out=tmp_path / "eval", progress=False)
    assert report.top1 == 1.0 and len(report.per_class) == 3  # report.json keeps every class
    md = (tmp_path / "eval" / "report.md").read_text()
    table = md.split("## Per-class metrics")[1].split("##")[0]
    assert "| oat-milk |" in table and "green-apple" not in table and "red-apple" not in table
    assert "2 class(es) of the model with no photo in this split and never predicted are left out" in table


def test_the_training_runs_report_says_val_calibration_is_in_sample(tiny_bundle) -> None:
    """The README: "val ECE is in-sample; report.md says so" - the training run's own report.md too."""
    assert tiny_bundle.card.metrics["split"] == "val"
    assert "in-sample" in (tiny_bundle.run_dir / "report" / "report.md").read_text()


# --------------------------------------------------------------------- 1, 7: fuse --model BUNDLE/card.json


@pytest.fixture(scope="module")
def fused(tiny_bundle, tmp_path_factory: pytest.TempPathFactory):
    """`skulens fuse --model BUNDLE/card.json` on the tiny catalogue plus one undecodable val photo."""
    from skulens.cli import main

    tmp = tmp_path_factory.mktemp("fuse")
    bundle = tmp / "bundle"
    shutil.copytree(tiny_bundle.bundle, bundle)
    manifest = write_catalogue(tmp / "cat")
    (tmp / "cat" / "val" / "red-apple" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    with open(manifest, "a", encoding="utf-8") as f:
        f.write("val/red-apple/broken.jpg,red-apple,Apple,val,colour=red,red apple\n")
    card_before = (bundle / "card.json").read_bytes()
    assert main(["fuse", "--model", str(bundle / "card.json"), "--data", str(manifest), "--out",
                 str(tmp / "rep"), "-q"]) == 0
    return bundle, manifest, card_before, json.loads((tmp / "rep" / "fusion.json").read_text())


def test_fuse_named_by_card_json_keeps_the_card(fused) -> None:
    from skulens.models.bundle import read_card
    from skulens.models.fusion import FUSION_FILE, load_fusion

    bundle, _, card_before, _ = fused
    assert (bundle / "card.json").read_bytes() == card_before
    assert read_card(bundle).classes == tuple(sorted(PRODUCTS))
    assert (bundle / FUSION_FILE).is_file() and not (bundle / "card.json.tmp").exists()
    loaded = load_fusion(bundle)
    assert loaded is not None and loaded.classes == tuple(sorted(PRODUCTS))


def test_fusion_report_scores_the_bundle_classifier_on_the_decoded_photos(fused, model: Model) -> None:
    _, manifest, _, report = fused
    val = list(load_catalogue(manifest).split("val"))
    assert len(val) == 10 and report["val"] == 9  # the broken photo is skipped by the fusion rows
    good = [s for s in val if s.path.name != "broken.jpg"]
    preds = model.predict([s.path for s in good], top_k=1)
    expected = float(np.mean([p.fine_label == s.label for p, s in zip(preds, good, strict=True)]))
    assert report["val_top1"]["bundle_classifier"] == pytest.approx(expected)


def test_save_fusion_refuses_a_file_that_is_not_safetensors(tmp_path: Path) -> None:
    from skulens.models.fusion import FusionHead, load_fusion, save_fusion

    head = FusionHead(4, 3, 2, hidden=8)
    card = tmp_path / "card.json"
    card.write_text("{}")
    with pytest.raises(ValueError, match="safetensors"):
        save_fusion(head, card, ("a", "b"))
    assert card.read_text() == "{}"
    written = save_fusion(head, tmp_path / "head.safetensors", ("a", "b"))
    loaded = load_fusion(written)
    assert loaded is not None and loaded.classes == ("a", "b")


def test_bundle_folder(tiny_bundle, tmp_path: Path) -> None:
    from skulens.models.bundle import BundleError, bundle_folder

    b = Path(tiny_bundle.bundle)
    assert bundle_folder(b) == bundle_folder(b / "card.json") == bundle_folder(b / "model.safetensors") == b
    with pytest.raises(BundleError):
        bundle_folder(tmp_path)


# --------------------------------------------------------------------- 3: PIL inputs


def _probs(preds) -> dict[str, float]:
    assert all(p.level != "error" for p in preds), [p.error for p in preds]
    return dict(preds[0].top_k)


def test_transparent_pil_image_is_composited_on_white_like_its_png(model: Model) -> None:
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)  # transparent black ...
    rgba[16:48, 16:48, :3] = np.asarray(make_image("oat-milk", np.random.default_rng(0), 32))
    rgba[16:48, 16:48, 3] = 255  # ... around an opaque product
    pil = Image.fromarray(rgba, "RGBA")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    from_pil, from_png = _probs(model.predict([pil], top_k=3)), _probs(model.predict([buf.getvalue()], top_k=3))
    assert from_pil.keys() == from_png.keys()
    assert np.allclose([from_pil[k] for k in from_png], list(from_png.values()), atol=1e-6)
    assert np.allclose(model.embed([pil]), model.embed([buf.getvalue()]), atol=1e-6)
    assert pil.mode == "RGBA"  # the caller's image is left alone


def test_exif_rotated_pil_image_is_turned_upright_like_its_file(model: Model, tmp_path: Path) -> None:
    arr = np.full((96, 64, 3), 240, dtype=np.uint8)  # tall: a turned photo is cropped differently
    arr[:40] = np.asarray(make_image("red-apple", np.random.default_rng(0), 64))[:40]
    arr[60:, :, :] = (230, 200, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "turned.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        from_pil = _probs(model.predict([im], top_k=3))
        assert im.size == (64, 96)
    from_path = _probs(model.predict([path], top_k=3))
    assert np.allclose([from_pil[k] for k in from_path], list(from_path.values()), atol=1e-6)


def test_truncated_or_huge_pil_image_is_a_per_image_error(model: Model, tiny_catalogue: Path) -> None:
    photo = min((tiny_catalogue.parent / "val" / "oat-milk").glob("*.jpg"))
    data = photo.read_bytes()
    truncated = Image.open(io.BytesIO(data[: len(data) // 2]))  # lazy: fails only when loaded
    huge = Image.new("1", (7000, 6000))  # 42 Mpixel, over the 40 Mpixel limit files have
    preds = model.predict([truncated, photo, huge])
    assert preds[0].level == "error" and preds[1].level != "error" and preds[2].level == "error"
    assert "truncated" in preds[0].error and "too many pixels" in preds[2].error
    assert preds[0].source == "<image 0>"


# --------------------------------------------------------------------- 6: ties


def test_ties_pick_the_first_class_as_argmax_does(model: Model) -> None:
    from skulens.models.predictor import decide

    card = model.card.with_(classes=("a", "b", "c", "d", "e"), coarse_fallback=0.0)
    fine = np.array([1.0, 0.0, 2.0, 2.0, 1.0]) / 6  # np.argsort(-fine)[0] is 3 here, argmax 2
    p = decide(card, fine, None, None, "x", 5, 0.0)
    assert p.fine_label == "c" == card.classes[int(fine.argmax())]
    assert [lab for lab, _ in p.top_k] == ["c", "d", "a", "e", "b"]


# --------------------------------------------------------------------- 9: arguments


def test_numpy_scalars_are_one_value_for_every_image(model: Model, tiny_catalogue: Path) -> None:
    photos = sorted((tiny_catalogue.parent / "val" / "oat-milk").glob("*.jpg"))[:2]
    preds = model.predict(photos, top_k=np.int64(2), min_confidence=np.float32(0.0))
    assert [len(p.top_k) for p in preds] == [2, 2] and all(p.level != "unknown" for p in preds)
    preds = model.predict(photos, top_k=[np.int64(1), 3])
    assert [len(p.top_k) for p in preds] == [1, 3]


def test_one_image_alone_is_refused_not_iterated(model: Model, tiny_catalogue: Path) -> None:
    photo = min((tiny_catalogue.parent / "val" / "oat-milk").glob("*.jpg"))
    for one in (str(photo), photo, photo.read_bytes(), Image.new("RGB", (8, 8))):
        with pytest.raises(TypeError, match="list"):
            model.predict(one)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="list"):
            model.embed(one)  # type: ignore[arg-type]
    assert model.predict([str(photo)])[0].source == str(photo)


# --------------------------------------------------------------------- 5: the baseline probe's device


class _FakeBackbone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.moved_to: list[object] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        self.moved_to.append(args[0] if args else kwargs.get("device"))
        return self


@pytest.mark.parametrize("runtime", ["torch", "other"])
def test_baseline_probe_runs_on_the_models_device_and_a_safe_precision(
        model: Model, tiny_catalogue: Path, monkeypatch: pytest.MonkeyPatch, runtime: str, tmp_path: Path) -> None:
    from skulens.evaluate import baseline
    from skulens.models import backbones

    fake = _FakeBackbone()
    seen: list[tuple[object, str]] = []

    def features(backbone, images, transform, *, precision="auto", **kw):
        seen.append((backbone.moved_to[-1] if backbone.moved_to else None, precision))
        return np.random.default_rng(len(images)).normal(size=(len(images), 8))

    monkeypatch.setattr(backbones, "create_backbone", lambda *a, **kw: fake)
    monkeypatch.setattr(baseline, "extract_features", features)
    if runtime == "torch":  # a GPU model in fp16: the probe must follow it there (faked: the runner stays on CPU)
        m = Model(model.net, model.card, torch.device("cpu"), "fp16", runner=model.runner)
        m.device = torch.device("cuda", 0)
        expected = (torch.device("cuda", 0), "fp16")
    else:  # an ONNX / LiteRT model: its precision means nothing to PyTorch
        m = Model(None, model.card, torch.device("cpu"), "fp16", runner=model.runner)
        expected = (torch.device("cpu"), "off")
    m.evaluate(tiny_catalogue, split="val", out=tmp_path / "eval", baseline=True, progress=False)
    assert seen == [expected, expected]


def test_a_run_on_a_named_manifest_is_evaluated_on_that_manifest(tmp_path: Path, monkeypatch) -> None:
    """The card records the manifest file a run was given, not its folder: `evaluate` without --data scored the
    folder's own manifest.csv (another catalogue) or failed when the folder had none."""
    from conftest import TINY, write_catalogue
    from skulens.api import train
    from skulens.cli import main

    default = write_catalogue(tmp_path / "cat")
    named = default.with_name("a.csv")
    default.rename(named)
    rows = named.read_text().splitlines()
    default.write_text("\n".join([rows[0], *[r for r in rows[1:] if ",val," in r][:2]]) + "\n")  # another one
    monkeypatch.chdir(tmp_path)  # --data given relative: the card records where it is, from any folder
    r = train("cat/a.csv", out=str(tmp_path / "run"), progress=False, **{**TINY, "epochs": 1})
    assert r.card.dataset["path"] == str(named)
    monkeypatch.chdir(tmp_path / "cat")
    assert main(["evaluate", "-m", str(r.bundle), "--out", str(tmp_path / "ev"), "-q"]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["extra"]["data"] == str(named) and report["model"]["n"] == len(load_catalogue(named).split("val")) > 2


def test_fuse_with_a_label_the_model_does_not_know_is_one_line(fused, tmp_path: Path, capsys) -> None:
    from skulens.cli import main

    bundle, manifest, _, _ = fused
    other = manifest.parent / "unknown.csv"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    path, _, rest = lines[1].split(",", 2)
    other.write_text("\n".join([lines[0], f"{path},purple,{rest}", *lines[2:]]) + "\n", encoding="utf-8")
    assert main(["fuse", "--model", str(bundle), "--data", str(other), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "does not know: purple" in capsys.readouterr().err  # it was a traceback
