"""Model bundles (model.safetensors + card.json): round trips, validation, atomic replacement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from skulens.data.decode import decode_image
from skulens.data.transforms import create_transform, to_uint8_tensor
from skulens.models.bundle import BundleError, load_bundle, read_card, save_bundle
from skulens.models.card import CARD_SCHEMA, ModelCard
from skulens.models.inference import run_heads


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_card(bundle: Path, **changes: object) -> None:
    card = json.loads((bundle / "card.json").read_text(encoding="utf-8"))
    card.update(changes)
    (bundle / "card.json").write_text(json.dumps(card), encoding="utf-8")


def _inputs(tiny_catalogue: Path, card: ModelCard) -> list[torch.Tensor]:
    paths = sorted((tiny_catalogue.parent / "val").rglob("*.jpg"))[:4]
    return [to_uint8_tensor(decode_image(p, reduce_to=card.resize_to)) for p in paths]


def _outputs(net: torch.nn.Module, card: ModelCard, images: list[torch.Tensor]):
    return run_heads(net, images, create_transform(card), device=torch.device("cpu"), precision="off",
                     embeddings=True)


def test_bundle_holds_only_safetensors_and_card(tiny_bundle) -> None:
    bundle = Path(tiny_bundle.bundle)
    assert sorted(f.name for f in bundle.iterdir()) == ["card.json", "model.safetensors"]
    for f in bundle.iterdir():
        assert b"torch._utils" not in f.read_bytes()  # no pickled tensors anywhere
    weights = load_file(str(bundle / "model.safetensors"))
    assert weights["head.weight"].shape[0] == tiny_bundle.card.num_classes == 3
    card = json.loads((bundle / "card.json").read_text(encoding="utf-8"))
    assert card["schema"] == CARD_SCHEMA
    assert sorted(card["classes"]) == ["green-apple", "oat-milk", "red-apple"]


def test_card_json_round_trips_through_from_dict(tiny_bundle) -> None:
    data = json.loads((Path(tiny_bundle.bundle) / "card.json").read_text(encoding="utf-8"))
    card = ModelCard.from_dict(data)
    assert card == tiny_bundle.card
    assert json.loads(card.to_json()) == data
    assert isinstance(card.classes, tuple) and isinstance(card.mean, tuple)
    assert card.backbone == "efficientnet_lite0" and card.input_size == 64
    assert read_card(tiny_bundle.bundle) == card
    # A path to card.json or model.safetensors inside the bundle names the same bundle.
    assert read_card(Path(tiny_bundle.bundle) / "model.safetensors") == card


def test_card_ignores_unknown_keys_but_keeps_values() -> None:
    data = json.loads(ModelCard("efficientnet_lite0", 64, (0.5,) * 3, (0.5,) * 3, 0.875, ("a", "b"), 8).to_json())
    data["from_the_future"] = 1
    card = ModelCard.from_dict(data)
    assert card.classes == ("a", "b") and card.num_classes == 2 and card.resize_to == round(64 / 0.875)


def test_save_load_round_trip_gives_identical_outputs(tiny_bundle, tiny_catalogue: Path, tmp_path: Path) -> None:
    net, card = load_bundle(tiny_bundle.bundle)
    images = _inputs(tiny_catalogue, card)
    before = _outputs(net, card, images)

    copy = save_bundle(net, card, tmp_path / "copy")
    net2, card2 = load_bundle(copy)
    after = _outputs(net2, card2, images)

    assert card2 == card
    original = load_file(str(Path(tiny_bundle.bundle) / "model.safetensors"))
    saved = load_file(str(copy / "model.safetensors"))
    assert original.keys() == saved.keys()
    assert all(torch.equal(original[k], saved[k]) for k in original)
    np.testing.assert_array_equal(before.fine, after.fine)
    np.testing.assert_array_equal(before.embeddings, after.embeddings)
    np.testing.assert_array_equal(before.attributes, after.attributes)
    assert before.fine.shape == (len(images), 3)


def test_card_without_a_head_the_weights_have_is_rejected(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / "b")
    _edit_card(bundle, attributes=[], attribute_thresholds=[])
    with pytest.raises(BundleError, match=r"does not match its card: missing \[\], unexpected \['attribute_head"):
        load_bundle(bundle)


def test_card_with_a_different_class_count_is_rejected(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / "b")
    _edit_card(bundle, classes=[*tiny_bundle.card.classes, "soy-milk"],
               fine_to_coarse=[*tiny_bundle.card.fine_to_coarse, 1])
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(bundle)


def test_missing_card_is_a_clear_error(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / "b")
    (bundle / "card.json").unlink()
    with pytest.raises(BundleError, match=r"not a skulens bundle \(no card.json\)"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="no card.json"):
        load_bundle(tmp_path / "does-not-exist")


def test_missing_weights_is_a_clear_error(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / "b")
    (bundle / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="missing model.safetensors"):
        load_bundle(bundle)


def test_newer_card_schema_is_refused(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / "b")
    _edit_card(bundle, schema=99)
    with pytest.raises(BundleError, match="schema 99 is newer"):
        load_bundle(bundle)
    with pytest.raises(ValueError, match="schema 99"):
        ModelCard.from_dict({**json.loads(tiny_bundle.card.to_json()), "schema": 99})


def test_a_card_field_this_skulens_does_not_know_is_named_in_a_warning(tiny_bundle, caplog) -> None:
    data = {**json.loads(tiny_bundle.card.to_json()), "temprature": 2.0}  # a hand edit's typo
    with caplog.at_level("WARNING", logger="skulens.models.card"):
        card = ModelCard.from_dict(data)
    assert card == tiny_bundle.card  # the rest of the card loads as before
    assert "'temprature'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="skulens.models.card"):
        ModelCard.from_dict(json.loads(tiny_bundle.card.to_json()))
    assert caplog.text == ""


def test_malformed_card_is_a_bundle_error(tiny_bundle, tmp_path: Path) -> None:
    bundle = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / "b")
    (bundle / "card.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match="invalid card"):
        read_card(bundle)
    # Valid JSON, but the required fields are missing.
    (bundle / "card.json").write_text(json.dumps({"backbone": "efficientnet_lite0"}), encoding="utf-8")
    with pytest.raises(BundleError, match="invalid card"):
        read_card(bundle)


def test_save_over_existing_bundle_replaces_it_atomically(tiny_bundle, tmp_path: Path) -> None:
    net, card = load_bundle(tiny_bundle.bundle)
    target = tmp_path / "models" / "bundle"
    save_bundle(net, card, target)
    (target / "stale.txt").write_text("from an older save", encoding="utf-8")

    renamed = card.with_(classes=("a", "b", "c"), metrics={"top1": 0.5})
    out = save_bundle(net, renamed, target)

    assert out == target
    assert sorted(f.name for f in target.iterdir()) == ["card.json", "model.safetensors"]
    assert read_card(target).classes == ("a", "b", "c")
    # No temp dir (".bundle.xxxx") or old copy (".bundle.old") is left beside it; its lock file (empty, held by
    # whoever rewrites the bundle) stays, as git's do.
    assert sorted(p.name for p in target.parent.iterdir()) == [".bundle.lock", "bundle"]
    assert (target.parent / ".bundle.lock").stat().st_size == 0
    _, loaded = load_bundle(target)
    assert loaded.metrics == {"top1": 0.5}


def test_an_old_card_without_exclusive_attributes_loads_with_none() -> None:
    # A card.json written before attribute_exclusive existed: it loads, and its attributes stay independent.
    old = json.loads(ModelCard("efficientnet_lite0", 64, (0.5,) * 3, (0.5,) * 3, 0.875, ("a", "b"), 8,
                               attributes=("colour=red", "colour=green"),
                               attribute_thresholds=(0.5, 0.5)).to_json())
    old.pop("attribute_exclusive", None)
    card = ModelCard.from_dict(old)
    assert card.attribute_exclusive == ()
    assert card.attributes == ("colour=red", "colour=green")


def test_exclusive_attributes_round_trip_through_card_json() -> None:
    card = ModelCard("efficientnet_lite0", 64, (0.5,) * 3, (0.5,) * 3, 0.875, ("a", "b"), 8,
                     attributes=("colour=green", "colour=red", "lactose_free"),
                     attribute_exclusive=(("colour=green", "colour=red"),))
    data = json.loads(card.to_json())
    assert data["attribute_exclusive"] == [["colour=green", "colour=red"]]  # plain JSON lists
    back = ModelCard.from_dict(data)
    assert back == card and back.attribute_exclusive == (("colour=green", "colour=red"),)


def test_a_kill_inside_the_bundle_swap_is_recovered(tiny_bundle, tmp_path: Path) -> None:
    """save_bundle moves the old bundle aside, then the new one in: a kill between the two leaves only
    `.bundle.old`, which the next read (or save, or `train --resume`) puts back."""
    from skulens.models.bundle import recover_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, tmp_path / ".bundle.old")  # the state right after the first os.replace
    assert not bundle.exists()
    card = read_card(bundle)
    assert card.classes == read_card(tiny_bundle.bundle).classes and bundle.is_dir()
    assert not (tmp_path / ".bundle.old").exists()
    load_bundle(bundle)
    assert recover_bundle(bundle) is False  # nothing to put back now


def test_a_damaged_card_or_cut_weights_are_one_line_in_every_command(tiny_bundle, tmp_path: Path, capsys) -> None:
    """A card that is not an object, or with a field of the wrong type, and weights cut short were tracebacks
    (AttributeError, TypeError deep in preprocessing, SafetensorError); `info` parsed the card itself."""
    from skulens.cli import main

    photo = str(next((Path(tiny_bundle.bundle).parent.parent).rglob("*.jpg"), Path("x.jpg")))
    for name, card in (("list", [1, 2]), ("size", "input_size-null"), ("truncated", "{\"backbone\": "),
                       ("schema", "schema-text")):
        bundle = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / name)
        if card == "input_size-null":
            _edit_card(bundle, input_size=None)
        elif card == "schema-text":
            _edit_card(bundle, schema="2")
        else:
            (bundle / "card.json").write_text(card if isinstance(card, str) else json.dumps(card), encoding="utf-8")
        with pytest.raises(BundleError, match="invalid card"):
            read_card(bundle)
        for args in (["info", "-m", str(bundle)], ["predict", "-m", str(bundle), photo]):
            assert main(args) == 2, (name, args)
            err = capsys.readouterr().err
            assert "invalid card" in err and len(err.strip().splitlines()) == 1, (name, err)
    cut = _copy_bundle(Path(tiny_bundle.bundle), tmp_path / "cut")
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(BundleError, match="unreadable or incomplete"):
        load_bundle(cut)


def test_the_cli_puts_back_a_bundle_a_kill_left_aside(tiny_bundle, tmp_path: Path, capsys) -> None:
    from skulens.cli import main

    shutil.copytree(tiny_bundle.bundle, tmp_path / ".bundle.old")  # a kill inside save_bundle's swap
    assert main(["info", "-m", str(tmp_path / "bundle")]) == 0  # it said "no such file or folder"
    assert (tmp_path / "bundle" / "card.json").is_file() and not (tmp_path / ".bundle.old").exists()


def test_a_reader_that_finds_a_bundle_mid_swap_waits_for_the_save(tiny_bundle, tmp_path: Path) -> None:
    """Between `save_bundle` moving the old bundle aside and moving the new one in, a reader (another process's
    `load`) found no card and put the old bundle back, and the save then failed. It now waits for the save."""
    import os
    import shutil
    import threading
    import time

    from skulens.models.bundle import bundle_folder, bundle_lock

    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, target)
    new = tmp_path / ".bundle.new"
    shutil.copytree(tiny_bundle.bundle, new)
    (new / "marker.txt").write_text("the new bundle", encoding="utf-8")
    found: list[Path] = []
    with bundle_lock(target):  # as save_bundle holds it over its swap
        os.replace(target, tmp_path / ".bundle.old")
        reader = threading.Thread(target=lambda: found.append(bundle_folder(target)))
        reader.start()
        time.sleep(0.5)
        assert not found and not target.exists()  # the reader waits; it did not put the old bundle back
        os.replace(new, target)
        shutil.rmtree(tmp_path / ".bundle.old")
    reader.join(timeout=30)
    assert found == [target] and (target / "marker.txt").is_file()


def test_a_reader_between_a_saves_card_and_weights_reads_again_after_the_save(tiny_bundle, tmp_path: Path) -> None:
    """A reader that read the card of one bundle and the weights of another (a save's swap between the two)
    called the bundle broken; it now waits for the save that holds the lock, then reads the new bundle."""
    import threading
    import time

    from skulens.models.bundle import bundle_lock, load_bundle

    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, target)
    weights = (target / "model.safetensors").read_bytes()
    loaded: list = []
    with bundle_lock(target):  # as save_bundle holds it over its swap
        (target / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # what the reader meets mid-swap
        reader = threading.Thread(target=lambda: loaded.append(load_bundle(target)))
        reader.start()
        time.sleep(0.5)
        assert not loaded  # it waits (it raised "unreadable or incomplete" before)
        (target / "model.safetensors").write_bytes(weights)
    reader.join(timeout=30)
    assert len(loaded) == 1 and loaded[0][1].classes == read_card(tiny_bundle.bundle).classes


def test_a_broken_bundle_is_still_refused_after_the_second_read(tiny_bundle, tmp_path: Path) -> None:
    from skulens.models.bundle import BundleError, load_bundle

    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle, target)
    (target / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="unreadable or incomplete"):
        load_bundle(target)
    with pytest.raises(BundleError, match="not a skulens bundle"):
        load_bundle(tmp_path / "no-such-bundle")
    assert not (tmp_path / ".no-such-bundle.lock").exists()
    (tmp_path / "not-a-bundle").mkdir()  # a folder, but no bundle: refused at once, no lock file left beside it
    with pytest.raises(BundleError, match="not a skulens bundle"):
        load_bundle(tmp_path / "not-a-bundle")
    assert not (tmp_path / ".not-a-bundle.lock").exists()


def test_val_top1_reads_the_untouched_val_of_a_run_selected_on_a_hold_out(tiny_bundle) -> None:
    """distill and prune reported a --select-on holdout teacher's hold-out top-1 as its "val top-1", beside the
    student's val (0.0 against 33.3 where the teacher's val was 11.1)."""
    from skulens.models.card import val_top1

    card = tiny_bundle.card
    assert val_top1(card.with_(metrics={"split": "val", "top1": 0.8})) == 0.8
    assert val_top1(card.with_(metrics={"top1": 0.7})) == 0.7  # cards before the split was recorded
    held = card.with_(metrics={"split": "holdout", "top1": 0.0, "val": {"top1": 0.111}})
    assert val_top1(held) == 0.111
    assert val_top1(card.with_(metrics={"split": "holdout", "top1": 0.5})) is None  # no val to report
