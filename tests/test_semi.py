"""Self-training: `skulens train --unlabeled DIR` (a teacher, pseudo-labels it is sure of, a student)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from conftest import PRODUCTS, TINY, make_image
from skulens.api import train
from skulens.config import ConfigError
from skulens.train.semi import choose_pseudo_threshold


def test_the_threshold_is_the_lowest_confidence_that_is_right_often_enough() -> None:
    # Right above 0.8, half right between 0.5 and 0.8.
    conf = np.array([0.95, 0.9, 0.85, 0.7, 0.65, 0.6, 0.55])
    right = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    probs = np.stack([conf, 1 - conf], axis=1)
    targets = np.where(right, 0, 1)
    t, precision = choose_pseudo_threshold(probs, targets, precision=0.95)
    assert t == pytest.approx(0.66) and precision == 1.0  # 0.7 and above: 4 of 4 right
    t, precision = choose_pseudo_threshold(probs, targets, precision=0.7)
    assert t == pytest.approx(0.3) and precision == pytest.approx(5 / 7)
    never = choose_pseudo_threshold(probs, np.ones(7, int), precision=0.9)
    assert never[1] is None  # nothing reaches the grid's top: no precision to state


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Unlabelled photos of the tiny catalogue's products (their true labels kept aside), and one broken file."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("unlabelled")
    truth = {}
    for label in PRODUCTS:
        for i in range(6):
            path = root / f"{label}-{i}.jpg"
            make_image(label, rng).save(path, quality=90)
            truth[path.name] = label
    (root / "broken.jpg").write_bytes(b"not a photo")
    return root, truth


def test_self_training_from_a_teacher(tiny_bundle, tiny_catalogue: Path, pool, tmp_path: Path) -> None:
    photos, truth = pool
    out = tmp_path / "run"
    r = train(tiny_catalogue, out=str(out), progress=False, unlabeled=str(photos), pseudo_precision=0.9,
              teacher=str(tiny_bundle.bundle), **TINY)

    assert r.bundle == out / "bundle" and not (out / "teacher").exists()  # the given teacher labelled
    st = r.card.metrics["self_training"]
    rows = list(csv.DictReader((out / "pseudo_labels.csv").open()))
    assert st["considered"] == 18 and st["unreadable"] == 1 and st["kept"] == len(rows) >= 6
    assert st["precision_at_threshold"] >= 0.9 and 0.3 <= st["threshold"] < 1
    right = sum(truth[Path(x["path"]).name] == x["label"] for x in rows)
    assert right / len(rows) >= 0.9  # the pseudo-labels are about as clean as asked
    assert all(float(x["confidence"]) >= st["threshold"] for x in rows)
    card = json.loads((out / "bundle" / "card.json").read_text())
    assert card["train_config"]["teacher"] == st["teacher"] == str(tiny_bundle.bundle)  # soft targets too
    with pytest.raises(ConfigError, match="pseudo_precision"):
        train(tiny_catalogue, out=str(tmp_path / "x"), progress=False, unlabeled=str(photos), pseudo_precision=1.0,
              **TINY)


def test_no_sync_bn_reaches_every_stage_of_self_training(tiny_bundle, tiny_catalogue: Path, pool, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # `train --no-sync-bn --unlabeled DIR`: each stage ran with the default (sync) before
    from skulens.config import resolve_config
    from skulens.train import distributed
    from skulens.train.engine import fit

    asked: list[bool] = []
    real = distributed.sync_batchnorm

    def recording(model, d, *, enabled=True):
        asked.append(enabled)
        return real(model, d, enabled=enabled)

    monkeypatch.setattr(distributed, "sync_batchnorm", recording)
    cfg = resolve_config({"data": str(tiny_catalogue), "out": str(tmp_path / "run"), "unlabeled": str(pool[0]),
                          "pseudo_precision": 0.9, "teacher": str(tiny_bundle.bundle), **TINY, "epochs": 1})
    fit(cfg, progress=False, sync_bn=False)
    assert asked == [False]  # the student's run (the teacher was given; a trained one goes the same way)


def test_a_finished_run_resumed_or_a_non_utf8_name_is_refused_before_any_photo_is_labelled(
        tiny_bundle, tiny_catalogue: Path, pool, tmp_path: Path) -> None:
    import os

    photos, _ = pool
    out = tmp_path / "run"
    given = {"unlabeled": str(photos), "pseudo_precision": 0.9, "teacher": str(tiny_bundle.bundle), **TINY}
    train(tiny_catalogue, out=str(out), progress=False, **given)
    before = (out / "pseudo_labels.csv").read_bytes()
    with pytest.raises(ConfigError, match="this run finished"):  # it labelled the photos again, then refused
        train(tiny_catalogue, out=str(out), progress=False, resume=True, **given)
    assert (out / "pseudo_labels.csv").read_bytes() == before
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in (b"caf\xe9.jpg", b"._x.jpg"):  # Latin-1, and macOS's resource fork beside a photo
        (odd / os.fsdecode(name)).write_bytes(next(photos.glob("*-0.jpg")).read_bytes())
    with pytest.raises(ConfigError, match="not in UTF-8"):  # it was a traceback after the teacher stage
        train(tiny_catalogue, out=str(tmp_path / "odd-run"), progress=False, **{**given, "unlabeled": str(odd)})
    from skulens.train.semi import _unlabelled_photos

    (odd / os.fsdecode(b"caf\xe9.jpg")).unlink()
    with pytest.raises(FileNotFoundError, match="no photos"):  # the hidden file is no photo
        _unlabelled_photos(str(odd))


def test_a_self_training_run_resumed_with_another_config_names_the_whole_runs_config(tiny_bundle, tiny_catalogue: Path,
                                                                                     pool, tmp_path: Path) -> None:
    import yaml

    from skulens.train.checkpoint import save_checkpoint

    photos, _ = pool
    out = tmp_path / "run"
    given = {"unlabeled": str(photos), "pseudo_precision": 0.9, "teacher": str(tiny_bundle.bundle), **TINY}
    train(tiny_catalogue, out=str(out), progress=False, **given)
    whole = yaml.safe_load((out / "self-training.yaml").read_text())  # the run's own config, --unlabeled and all
    assert (whole["unlabeled"], whole["teacher"], whole["out"], whole["resume"]) == (str(photos), given["teacher"],
                                                                                     str(out), False)
    # The student stage (OUT itself here) killed mid-run: its checkpoint holds the config it ran with.
    card = json.loads((out / "bundle" / "card.json").read_text())
    save_checkpoint(out / "checkpoint", {"config": card["train_config"], "model": {}, "state": {}})
    shutil.rmtree(out / "bundle")
    advice = f"resume it as it was: skulens train --config {out / 'self-training.yaml'} --resume"
    for change, shown in (({"lr": 0.5}, f"lr: {TINY.get('lr', 0.001)!r} then, 0.5 now"),
                          ({"pseudo_precision": 0.8}, "pseudo_precision: 0.9 then, 0.8 now")):  # in no stage's config
        with pytest.raises(ConfigError, match="different config") as refused:
            train(tiny_catalogue, out=str(out), progress=False, resume=True, **{**given, **change})
        # the stage's own config.yaml would resume the student alone, without its pseudo-labels
        assert shown in str(refused.value) and str(refused.value).endswith(advice)
    assert yaml.safe_load((out / "self-training.yaml").read_text()) == whole  # not a refused run's config
    (out / "self-training.yaml").unlink()  # a run from before the file: the stage refuses, naming no file
    with pytest.raises(ConfigError, match="different config") as refused:
        train(tiny_catalogue, out=str(out), progress=False, resume=True, **{**given, "lr": 0.5})
    assert str(refused.value).endswith(f"the command that started {out}, with its options and --resume")
    assert not (out / "self-training.yaml").exists()
    (out / "self-training.yaml").write_text(yaml.safe_dump(whole))
    labelled = (out / "pseudo_labels.csv").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already holds a run") as refused:  # a new run into the used folder
        train(tiny_catalogue, out=str(out), progress=False, **{**given, "lr": 0.5})
    assert str(refused.value).startswith(f"{out} already holds a run")  # at once, before any photo is labelled
    assert (out / "pseudo_labels.csv").stat().st_mtime_ns == labelled
    assert yaml.safe_load((out / "self-training.yaml").read_text()) == whole


def test_self_training_trains_its_teacher_first(tiny_catalogue: Path, pool, tmp_path: Path) -> None:
    photos, _ = pool
    out = tmp_path / "run"
    r = train(tiny_catalogue, out=str(out), progress=False, unlabeled=str(photos), epochs=4, lr=3e-3,
              **{k: v for k, v in TINY.items() if k != "epochs"})
    assert (out / "teacher" / "bundle" / "card.json").is_file() and (out / "pseudo_labels.csv").is_file()
    assert r.card.metrics["self_training"]["teacher"] == str(out / "teacher" / "bundle")


def test_pseudo_labelled_photos_are_trained_on_and_never_held_out(tiny_catalogue: Path, tmp_path: Path) -> None:
    from skulens.data.catalogue import EXTRA_TRAIN, Sample, load_catalogue, merge_samples, selection_split

    cat = load_catalogue(tiny_catalogue)
    extra = [Sample(path=tmp_path / f"p{i}.jpg", label=cat.classes[i % len(cat.classes)],
                    coarse_label=cat.hierarchy.get(cat.classes[i % len(cat.classes)])) for i in range(6)]
    merged = merge_samples(cat, extra, split=EXTRA_TRAIN)
    assert merged.split("train") == cat.split("train")
    for select_on in ("holdout", "val"):
        before, after = selection_split(cat, select_on, 0.3, 0), selection_split(merged, select_on, 0.3, 0)
        assert after[1] == before[1] and after[2] == before[2]  # the same photos to select on and to score
        assert after[0] == before[0] + extra  # and the pseudo-labelled ones only trained on


def test_two_rounds_of_self_training_chain_their_teachers(tiny_bundle, tiny_catalogue: Path, pool,
                                                          tmp_path: Path) -> None:
    photos, truth = pool
    out = tmp_path / "run"
    r = train(tiny_catalogue, out=str(out), progress=False, unlabeled=str(photos), pseudo_precision=0.9,
              pseudo_rounds=2, teacher=str(tiny_bundle.bundle), **TINY)
    first = out / "round-1"
    assert r.bundle == out / "bundle" and (first / "bundle" / "card.json").is_file()
    rounds = r.card.metrics["self_training"]["rounds"]
    assert [x["round"] for x in rounds] == [1, 2]
    assert rounds[0]["teacher"] == str(tiny_bundle.bundle) and rounds[1]["teacher"] == str(first / "bundle")
    assert r.card.metrics["self_training"]["teacher"] == str(first / "bundle")  # the last round's
    assert json.loads((out / "bundle" / "card.json").read_text())["train_config"]["teacher"] == str(first / "bundle")
    for folder, summary, least in ((first, rounds[0], 6), (out, rounds[1], 1)):
        rows = list(csv.DictReader((folder / "pseudo_labels.csv").open()))
        assert len(rows) == summary["kept"] >= least  # each round's own pseudo-labels, written beside its student
        assert all(float(x["confidence"]) >= summary["threshold"] for x in rows)
        if folder == first:  # the given teacher's labels are as clean as asked (a 4-step student's need not be)
            assert sum(truth[Path(x["path"]).name] == x["label"] for x in rows) / len(rows) >= 0.9
    # each stage is a plain run: its config recorded pseudo_rounds 2 beside no --unlabeled, so the bundle could
    # not be retrained nor its config.yaml run ("rounds of self-training need unlabelled photos")
    from skulens.config import load_config, resolve_config
    from skulens.train.retrain import retrain

    for stage in (first, out):
        assert resolve_config(load_config(stage / "config.yaml")).pseudo_rounds == 1
    again = retrain(r.bundle, out=str(tmp_path / "retrained"), progress=False, epochs=1, max_steps=1)
    assert again.card.train_config["pseudo_rounds"] == 1
    with pytest.raises(ConfigError, match="pseudo_rounds"):
        train(tiny_catalogue, out=str(tmp_path / "x"), progress=False, unlabeled=str(photos), pseudo_rounds=0, **TINY)
    with pytest.raises(ConfigError, match="need unlabelled photos"):
        train(tiny_catalogue, out=str(tmp_path / "y"), progress=False, pseudo_rounds=2, **TINY)


# --- under torchrun: 2 CPU processes (gloo), for real ------------------------------------------------------


def test_strong_views_do_not_depend_on_the_shard() -> None:
    """A photo's strong view is seeded by its index in the whole list: a slice labelled on its own (one process's
    share) gets the views the whole list gets; and the caller's random state is left alone."""
    import torch

    from skulens.train.semi import _strong_views

    photos = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(6)]
    whole = _strong_views(photos, 3, range(6))
    state = torch.random.get_rng_state()
    shard = _strong_views(photos[4:], 3, [4, 5])
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(whole[4:], shard, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(whole[4], _strong_views(photos[4:5], 4, [4])[0])  # the seed still matters


SMALL = 32  # px: a handful of small photos keeps 2 processes' labelling to seconds
PG_TIMEOUT_S = 60  # a rank left waiting for another fails after this, not after the default 60 minutes


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 unlabelled 32-px photos and one broken file (listed first: sorted, it is in rank 0's share)."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("small-unlabelled")
    for label in PRODUCTS:
        for i in range(3):
            make_image(label, rng, size=SMALL).save(root / f"{label}-{i}.jpg", quality=90)
    (root / "broken.jpg").write_bytes(b"not a photo")
    return root


def _self_train_recorded(cfg: dict[str, Any]) -> dict[str, Any]:
    """`self_train` up to its student, whose fit is replaced by a note of the pseudo-labels it would train on."""
    from skulens.config import resolve_config
    from skulens.data.catalogue import EXTRA_TRAIN, load_catalogue
    from skulens.train.semi import self_train

    config = resolve_config(cfg)
    seen: dict[str, Any] = {}

    def student(c: Any, *, catalogue: Any, progress: bool, extra_metrics: dict[str, Any], resume_advice: str) -> Any:
        seen["labels"] = [[Path(s.path).name, s.label] for s in catalogue.split(EXTRA_TRAIN)]
        seen["summary"] = {k: v for k, v in extra_metrics["self_training"].items() if k != "rounds"}
        return SimpleNamespace(bundle=c.teacher)

    catalogue = load_catalogue(config.data, val_fraction=config.val_fraction, seed=config.seed)
    self_train(config, catalogue, progress=False, fit_run=student)
    return seen


def _noting_views(views: list[list[Any]]) -> Any:
    """`semi._strong_views` that also notes, in `views`, each view's index (its seed) and a digest of its pixels."""
    from skulens.train import semi

    draw = semi._strong_views

    def drawing(tensors: list[Any], seed: int, indices: Any) -> list[Any]:
        out = draw(tensors, seed, indices)
        views.extend([int(i), hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()]
                     for i, v in zip(indices, out, strict=True))
        return out

    return drawing


def _self_train_on_rank(rank: int, port: int, cfg: dict[str, Any], notes: str, poison: str | None,
                        late: str | None) -> None:
    """One of 2 spawned processes: joins a gloo group and self-trains; notes what it labelled (and each strong
    view drawn) and wrote, the pseudo-labels its student got, or the error it raised, in NOTES/rank-R.json.
    `late`: a photo that rank 1 lists and rank 0 does not (it arrives in --unlabeled between their listings)."""
    import torch
    import torch.distributed as dist

    from skulens.data import dataset
    from skulens.train import semi

    torch.set_num_threads(1)
    note: dict[str, Any] = {"labelled": [], "writes": 0, "views": []}
    label, write, decode, listing = (semi.pseudo_label, semi._write_pseudo_labels, dataset._decode_one,
                                     semi._unlabelled_photos)

    def labelling(model: Any, photos: Any, *args: Any, **kwargs: Any) -> Any:
        note["labelled"] += [Path(p).name for p in photos]
        return label(model, photos, *args, **kwargs)

    def writing(*args: Any) -> None:
        note["writes"] += 1
        write(*args)

    def decoding(path: Path, short_side: int) -> Any:
        if path.name == poison:  # what no decoder error covers (a library bug, memory): labelling itself fails
            raise RuntimeError(f"cannot label {path.name}")
        return decode(path, short_side)

    def listing_late(source: str) -> list[Path]:
        assert late is not None
        if rank == 1:
            dist.barrier()  # rank 0 has listed the folder
            (Path(source) / late).write_bytes(next(Path(source).glob("*-0.jpg")).read_bytes())
        photos = listing(source)
        if rank == 0:
            dist.barrier()
        return photos

    semi.pseudo_label, semi._write_pseudo_labels, dataset._decode_one = labelling, writing, decoding
    semi._strong_views = _noting_views(note["views"])
    if late is not None:
        semi._unlabelled_photos = listing_late
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=PG_TIMEOUT_S))
    t0 = time.monotonic()
    try:
        note.update(_self_train_recorded(cfg))
    except Exception as exc:  # noqa: BLE001 - noted for the test to compare across ranks
        note["error"] = str(exc)
    finally:
        note["seconds"] = time.monotonic() - t0
        dist.destroy_process_group()
    (Path(notes) / f"rank-{rank}.json").write_text(json.dumps(note))


def _two_processes(cfg: dict[str, Any], notes: Path, poison: str | None = None, *, late: str | None = None,
                   limit: float = 100) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    from _serve_util import free_port

    ctx = mp.start_processes(_self_train_on_rank, args=(free_port(), cfg, str(notes), poison, late), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + limit
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2 processes were still running after {limit} s")
    return [json.loads((notes / f"rank-{r}.json").read_text()) for r in range(2)]


def _cfg(tiny_bundle: Any, catalogue: Path, photos: Path, out: Path) -> dict[str, Any]:
    return {**TINY, "data": str(catalogue), "out": str(out), "unlabeled": str(photos),
            "teacher": str(tiny_bundle.bundle), "pseudo_precision": 0.9, "device": "cpu"}


@pytest.mark.timeout(180)
def test_two_processes_label_a_share_each_and_agree_with_one(tiny_bundle, tiny_catalogue: Path, small_pool: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    one_out, two_out, notes = tmp_path / "one", tmp_path / "two", tmp_path / "notes"
    notes.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each spawned process: one source of rounding fewer
    try:
        one = _self_train_recorded(_cfg(tiny_bundle, tiny_catalogue, small_pool, one_out))
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks = _two_processes(_cfg(tiny_bundle, tiny_catalogue, small_pool, two_out), notes)

    assert [r.get("error") for r in ranks] == [None, None]
    names = sorted(p.name for p in small_pool.iterdir())
    assert [r["labelled"] for r in ranks] == [names[:5], names[5:]]  # each rank its share, the broken one rank 0's
    assert [r["writes"] for r in ranks] == [1, 0]  # rank 0 alone writes
    assert one["summary"]["considered"] == 9 and one["summary"]["unreadable"] == 1 and len(one["labels"]) >= 3
    for r in ranks:  # every rank trains on all the labels, the ones a single process gives, in its order
        assert r["labels"] == one["labels"] and r["summary"] == one["summary"]
    rows = [list(csv.DictReader((out / "pseudo_labels.csv").open())) for out in (one_out, two_out)]
    assert [x["label"] for x in rows[1]] == [x["label"] for x in rows[0]]
    assert [float(x["confidence"]) for x in rows[1]] == pytest.approx([float(x["confidence"]) for x in rows[0]],
                                                                      abs=2e-4)


@pytest.mark.timeout(180)
def test_a_photo_that_fails_on_rank_1_stops_both_ranks_with_one_error(tiny_bundle, tiny_catalogue: Path,
                                                                       small_pool: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    photos, notes = tmp_path / "photos", tmp_path / "notes"
    notes.mkdir()
    photos.mkdir()
    for p in small_pool.iterdir():
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "zz-poison.jpg").write_bytes((small_pool / "oat-milk-0.jpg").read_bytes())  # last: rank 1's share
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks = _two_processes(_cfg(tiny_bundle, tiny_catalogue, photos, tmp_path / "out"), notes, "zz-poison.jpg")

    errors = [r.get("error") for r in ranks]
    # rank 0 hears of rank 1's error; rank 1 raises its own, as one process would (the CLI's exit code and line)
    assert errors == ["self-training: pseudo-labelling failed on rank 1 (RuntimeError: cannot label zz-poison.jpg)",
                      "cannot label zz-poison.jpg"], errors
    assert "zz-poison.jpg" not in ranks[0]["labelled"]  # rank 0 labelled its share only, and heard of rank 1's error
    assert all(r["seconds"] < PG_TIMEOUT_S for r in ranks)  # no rank waited out the timeout of a collective
    assert not (tmp_path / "out" / "pseudo_labels.csv").exists()


@pytest.mark.timeout(180)
def test_a_corrupt_photo_mid_shard_shifts_no_label_and_no_view(tiny_bundle, tiny_catalogue: Path, small_pool: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard's photos after an unreadable one keep their index in the whole list (`offset + kept[i]`): each
    readable photo gets the strong view, and so the pseudo-label, that one process gives it."""
    import torch

    from skulens.train import semi

    photos, notes = tmp_path / "photos", tmp_path / "notes"
    notes.mkdir()
    shutil.copytree(small_pool, photos)
    (photos / "red-apple-0b.jpg").write_bytes(b"not a photo either")  # sorted 9th of 11: mid rank 1's share
    names = sorted(p.name for p in photos.iterdir())
    readable = [i for i, name in enumerate(names) if name not in ("broken.jpg", "red-apple-0b.jpg")]
    views: list[list[Any]] = []
    monkeypatch.setattr(semi, "_strong_views", _noting_views(views))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each spawned process: one source of rounding fewer
    try:
        one = _self_train_recorded(_cfg(tiny_bundle, tiny_catalogue, photos, tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks = _two_processes(_cfg(tiny_bundle, tiny_catalogue, photos, tmp_path / "two"), notes)

    assert [r.get("error") for r in ranks] == [None, None]
    shard = ranks[1]["labelled"]
    assert shard == names[5:] and 0 < shard.index("red-apple-0b.jpg") < len(shard) - 1  # mid-shard, with an offset
    assert one["summary"]["considered"] == 9 and one["summary"]["unreadable"] == 2
    assert [i for i, _ in views] == readable  # one process: each readable photo's view seeded by its index
    assert [i for r in ranks for i, _ in r["views"]] == readable  # two: the same indices, the corrupt one skipped
    assert {i: v for r in ranks for i, v in r["views"]} == dict(views)  # and the same views, pixel for pixel
    for r in ranks:
        assert r["labels"] == one["labels"] and r["summary"] == one["summary"]


@pytest.mark.timeout(180)
def test_ranks_that_list_other_photos_stop_with_one_error(tiny_bundle, tiny_catalogue: Path, small_pool: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank lists --unlabeled itself and labels a slice of its list by position; a photo that arrives
    between the ranks' listings would misalign the slices and the gathered labels: every rank stops first."""
    photos, notes = tmp_path / "photos", tmp_path / "notes"
    notes.mkdir()
    shutil.copytree(small_pool, photos)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks = _two_processes(_cfg(tiny_bundle, tiny_catalogue, photos, tmp_path / "out"), notes, late="late.jpg")

    errors = [r.get("error") for r in ranks]
    assert errors[0] == errors[1], errors  # one error, raised on every rank
    assert errors[0] is not None and errors[0].startswith(f"the 2 processes disagree about the photos in "
                                                          f"--unlabeled {photos}: ['10 photos, sha256 "), errors
    assert "'11 photos, sha256 " in errors[0] and "every node must list the same photos there" in errors[0]
    assert [r["labelled"] for r in ranks] == [[], []]  # before any labelling
    assert all(r["seconds"] < PG_TIMEOUT_S for r in ranks)
    assert not (tmp_path / "out" / "pseudo_labels.csv").exists()


def test_unlabelled_photos_that_the_catalogue_holds_are_left_out(tiny_catalogue: Path, pool, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """An --unlabeled folder that overlaps the catalogue (the catalogue itself, given by mistake; or the folder
    `suggest-labels` filled in) must not put the photos a run selects on into its training: they and the training
    photos are left out; another split's photos (val under --select-on holdout) stay, with a warning that scores
    there are transductive."""
    from types import SimpleNamespace

    from skulens.data.catalogue import load_catalogue, selection_split
    from skulens.train.semi import _unlabelled_photos, _without_labelled

    cat = load_catalogue(tiny_catalogue)
    photos, _ = pool
    unlabelled = sorted(p for p in photos.iterdir() if p.suffix == ".jpg")
    on_val = SimpleNamespace(select_on="val", holdout_fraction=0.3, seed=0, unlabeled="U")
    train_photos, val_photos = [s.path for s in cat.split("train")], [s.path for s in cat.split("val")]
    link = tmp_path / "same-photo.jpg"
    link.symlink_to(val_photos[0])  # the same file under another name is still the catalogue's
    with caplog.at_level("WARNING", logger="skulens.train.semi"):
        kept = _without_labelled(on_val, cat, [*unlabelled, *train_photos, *val_photos, link])
    assert kept == unlabelled and "labelled photos of the catalogue" in caplog.text
    with pytest.raises(ConfigError, match="nothing is left"):
        _without_labelled(on_val, cat, train_photos + val_photos)

    on_holdout = SimpleNamespace(select_on="holdout", holdout_fraction=0.3, seed=0, unlabeled="U")
    _, held, _ = selection_split(cat, "holdout", 0.3, 0)
    caplog.clear()
    with caplog.at_level("WARNING", logger="skulens.train.semi"):
        assert _without_labelled(on_holdout, cat, [held[0].path, *val_photos]) == val_photos  # another store's
    assert "transductive" in caplog.text and "hold-out" in caplog.text
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(FileNotFoundError, match="not a photo"):
        _unlabelled_photos(str(notes))


def test_copies_of_labelled_photos_are_left_out_and_pseudo_labels_carry_their_classs_attributes(
        tiny_bundle, tiny_catalogue: Path, small_pool: Path, tmp_path: Path) -> None:
    """A val photo copied into --unlabeled (an intake folder after labelling) was pseudo-labelled and trained on
    (only the same path was left out); and every pseudo-labelled photo taught the attribute head "no attributes"
    (a self-trained student scored green apples' colour=green at 0.001)."""
    import shutil

    from skulens.data.catalogue import load_catalogue

    pool = tmp_path / "pool"
    shutil.copytree(small_pool, pool)
    val_photo = min((tiny_catalogue.parent / "val").rglob("*.jpg"))
    shutil.copy(val_photo, pool / "copied-val.jpg")
    seen = _self_train_recorded({**_cfg(tiny_bundle, tiny_catalogue, pool, tmp_path / "run"), "pseudo_precision": 0.5})
    assert "copied-val.jpg" not in [name for name, _ in seen["labels"]]
    assert seen["labels"]  # the others are pseudo-labelled

    from skulens.config import resolve_config
    from skulens.data.catalogue import EXTRA_TRAIN
    from skulens.train.semi import self_train

    config = resolve_config({**_cfg(tiny_bundle, tiny_catalogue, pool, tmp_path / "run2"), "pseudo_precision": 0.5})
    catalogue = load_catalogue(config.data, val_fraction=config.val_fraction, seed=config.seed)
    attributes = {s.label: set(s.attributes) for s in catalogue.split("train")}
    got: dict[str, set[str]] = {}

    def student(c, *, catalogue, progress, extra_metrics, resume_advice):
        got.update({s.label: set(s.attributes) for s in catalogue.split(EXTRA_TRAIN)})
        return SimpleNamespace(bundle=c.teacher)

    self_train(config, catalogue, progress=False, fit_run=student)
    assert got and all(got[label] == attributes[label] and got[label] for label in got), (got, attributes)


def test_a_moved_self_training_run_killed_in_its_teacher_resumes_where_it_is(tmp_path: Path) -> None:
    """`--config MOVED/self-training.yaml --resume` after a kill in the teacher (or a round) started a new run in
    the old folder: only OUT/checkpoint was looked for, and a self-training run keeps it in teacher/ or round-K/."""
    import argparse

    from skulens.cli.train import _moved_run

    for stage in ("teacher", "round-1"):
        moved = tmp_path / stage / "moved"
        (moved / stage / "checkpoint").mkdir(parents=True)
        (moved / "self-training.yaml").write_text(f"out: {tmp_path / 'old'}\n", encoding="utf-8")
        ns = argparse.Namespace(config=str(moved / "self-training.yaml"), resume=True)
        assert _moved_run(ns, {}, str(tmp_path / "old")) == str(moved)
        ns.resume = False
        assert _moved_run(ns, {}, str(tmp_path / "old")) == str(tmp_path / "old")


def test_a_pseudo_label_needs_the_threshold_and_a_strong_view_that_agrees(tmp_path: Path) -> None:
    """pseudo_label keeps a photo whose weak view is at least `threshold` sure and whose strong view names the
    same product; a confident photo whose strong view disagrees is counted as inconsistent, never kept."""
    from skulens.train.semi import pseudo_label

    rng = np.random.default_rng(0)
    photos = []
    for i in range(4):
        photos.append(tmp_path / f"u{i}.jpg")
        make_image("red-apple", rng).save(photos[-1])
    weak = np.array([[0.9, 0.1], [0.9, 0.1], [0.25, 0.75], [0.7, 0.3]])  # 3: below the threshold
    strong = np.array([[0.6, 0.4], [0.4, 0.6], [0.1, 0.9], [0.9, 0.1]])  # 1: disagrees

    class Model:
        card = SimpleNamespace(resize_to=32, classes=["a", "b"], coarse_classes=None, fine_to_coarse=None)
        calls = 0

        def run(self, tensors, **kwargs):
            assert len(tensors) == 4
            Model.calls += 1
            return SimpleNamespace(fine=weak if Model.calls == 1 else strong)

    out = pseudo_label(Model(), photos, 0.75)
    assert [(s.path.name, s.label) for s in out.samples] == [("u0.jpg", "a"), ("u2.jpg", "b")]
    assert out.confidences == pytest.approx((0.9, 0.75))
    assert (out.considered, out.inconsistent) == (4, 1)
