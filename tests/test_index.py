"""Vector indexes: both backends against brute-force numpy, filters, updates, persistence, crashes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skulens.search.index import (
    IndexChangedError,
    IndexRecord,
    IndexStoreError,
    SearchHit,
    compile_filter,
    create_index,
    open_index,
    record_matches,
)

faiss = pytest.importorskip("faiss")
try:
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401

    BACKENDS = ["faiss", "milvus"]
except ImportError:  # pragma: no cover - the dev install has both
    BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.skip(reason="pymilvus / milvus-lite missing"))]

DIM = 16
QUOTED = 'Ben & Jerry\'s "Cookie" \\ Dough'


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    # OpenMP with 2 threads on a busy 2-core box is ~5x slower on these tiny arrays, not faster.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(n: int = 240, dim: int = DIM, seed: int = 0) -> tuple[list[IndexRecord], np.ndarray]:
    """Entries of n // 3 products (1-5 entries each), two coarse classes, metadata of every type."""
    rng = np.random.default_rng(seed)
    vecs = unit(rng.standard_normal((n, dim)))
    recs = []
    for i in range(n):
        p = i % (n // 3) if i % 5 else i % 7  # products 0..6 collect extra entries
        coarse = "Milk" if p % 3 == 0 else (QUOTED if p % 3 == 1 else None)
        recs.append(IndexRecord(id=f"img/{i:04d}.jpg", product_id=f"p{p}", label=f"label-{p}", coarse_label=coarse,
                                title=f"Product {p}", image=f"img/{i:04d}.jpg",
                                metadata={"in_stock": p % 2 == 0, "shelf": p % 4, "price": 0.5 * (p % 5),
                                          "brand": "Acme" if p % 6 else "O'Neil \"Best\""}))
    return recs, vecs


def new_index(backend: str, tmp_path: Path, dim: int = DIM, **options):
    if backend == "faiss":
        return create_index("faiss", tmp_path / "idx", dim, **options)
    # FLAT: exact, so results can be compared with numpy; the default ANN index has its own test.
    options.setdefault("index_type", "FLAT")
    return create_index("milvus", tmp_path / "x.db", dim, **options)


@pytest.fixture(params=BACKENDS)
def filled(request, tmp_path):
    recs, vecs = make_data()
    index = new_index(request.param, tmp_path)
    index.add(recs, vecs)
    yield index, recs, vecs
    index.close()


def brute_force(recs, vecs, queries, k, flt=None, group=True, exclude=()):
    compiled = compile_filter(flt)
    keep = [i for i, r in enumerate(recs) if record_matches(r, compiled) and r.product_id not in exclude]
    out = []
    for q in unit(np.atleast_2d(queries)):
        scores = vecs[keep] @ q
        order = np.argsort(-scores, kind="stable")
        hits, seen = [], set()
        for j in order:
            r = recs[keep[j]]
            if group and r.product_id in seen:
                continue
            seen.add(r.product_id)
            hits.append((r.id, float(scores[j])))
            if len(hits) == k:
                break
        out.append(hits)
    return out


def ids_scores(results: list[list[SearchHit]]):
    return [[(h.record.id, h.score) for h in row] for row in results]


def assert_same(got, want):
    assert [[i for i, _ in row] for row in got] == [[i for i, _ in row] for row in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# search, filters, updates (both backends)


def test_search_matches_brute_force(filled):
    index, recs, vecs = filled
    assert len(index) == len(recs)
    queries = np.random.default_rng(1).standard_normal((4, DIM))
    got = index.search(queries, 7, group_by_product=False)
    assert_same(ids_scores(got), brute_force(recs, vecs, queries, 7, group=False))
    grouped = index.search(queries, 7)
    assert_same(ids_scores(grouped), brute_force(recs, vecs, queries, 7))
    for row in grouped:
        assert len({h.product_id for h in row}) == 7
        assert all(h.product_id == h.record.product_id for h in row)
    single = index.search(queries[0], 3)  # one vector is one query
    assert [h.record.id for h in single[0]] == [h.record.id for h in grouped[0][:3]]


@pytest.mark.parametrize("k", [1.5, True, "2", 0, -1])
def test_the_index_refuses_a_k_that_is_not_a_whole_number(filled, k):
    """1.5 returned every product (not 1), "2" was a TypeError; the search engine refused them, the index not."""
    index, _recs, vecs = filled
    with pytest.raises(IndexStoreError, match="whole number >= 1"):
        index.search(vecs[:1], k=k)
    with pytest.raises(IndexStoreError, match="whole number >= 1"):
        index.more_like_this(index.records()[0].product_id, k=k)


def test_group_by_product_fetches_until_k_products(filled, tmp_path):
    index, recs, vecs = filled
    # 30 near-copies of one product around the query: the top 30 entries are all that product
    rng = np.random.default_rng(2)
    q = unit(rng.standard_normal(DIM))
    crowd = unit(q + 0.05 * rng.standard_normal((30, DIM)))
    index.add([IndexRecord(f"crowd/{i}", "crowd", "crowd") for i in range(30)], crowd)
    hits = index.search(q, 5)[0]
    assert hits[0].product_id == "crowd"
    assert len({h.product_id for h in hits}) == 5
    all_recs = recs + [IndexRecord(f"crowd/{i}", "crowd", "crowd") for i in range(30)]
    assert_same(ids_scores([hits]), brute_force(all_recs, np.vstack([vecs, crowd]), q, 5))


@pytest.mark.parametrize("flt", [
    {"coarse_label": "Milk"},
    {"coarse_label": QUOTED},
    {"in_stock": True},
    {"in_stock": False, "coarse_label": "Milk"},
    {"shelf": [1, 3]},
    {"label": ["label-2", "label-5", "label-8"]},
    {"product_id": "p4"},
    {"brand": "O'Neil \"Best\""},
    {"price": 1},  # matches 1.0: numbers compare by value
    {"shelf": True},  # True == 1, as in Python and Milvus
    {"shelf": "1"},  # a string never equals a number
    {"colour": "red"},  # a key no entry has: nothing matches
])
def test_filters_match_python_semantics(filled, flt):
    index, recs, vecs = filled
    queries = np.random.default_rng(3).standard_normal((3, DIM))
    want = brute_force(recs, vecs, queries, 6, flt)
    assert_same(ids_scores(index.search(queries, 6, filter=flt)), want)
    raw = index.search(queries, 6, filter=flt, group_by_product=False)
    assert_same(ids_scores(raw), brute_force(recs, vecs, queries, 6, flt, group=False))
    if flt in ({"shelf": "1"}, {"colour": "red"}):
        assert want == [[], [], []]
    elif flt == {"shelf": True}:
        assert want[0] and all(recs[int(i[4:8])].metadata["shelf"] == 1 for i, _ in want[0])


@pytest.mark.parametrize("flt, message", [
    ({"title": "x"}, "cannot filter on 'title'"),
    ({"label": 3}, "values must be strings"),
    ({"in_stock": None}, "NoneType values are not supported"),
    ({"shelf": []}, "empty list"),
    ({"bad key": 1}, "not a valid metadata key"),
    ({"brand": "a\x00b"}, "control characters"),
    ({"price": float("nan")}, "not a finite number"),
])
def test_bad_filters_are_clear_errors(filled, flt, message):
    index, _, _ = filled
    with pytest.raises(IndexStoreError, match=message):
        index.search(np.ones(DIM), 3, filter=flt)


def test_update_metadata_without_reembedding(filled):
    index, _, vecs = filled
    before = index.vectors(["img/0000.jpg"])
    n = len(index.records("p0"))
    assert index.update_metadata("p0", in_stock=False, promo="summer") == n
    assert index.update_metadata("p0", {"shelf": None}) == n  # None deletes the key
    for r in index.records("p0"):
        assert r.metadata["in_stock"] is False and r.metadata["promo"] == "summer" and "shelf" not in r.metadata
    np.testing.assert_array_equal(index.vectors(["img/0000.jpg"]), before)
    q = vecs[0]
    assert "p0" not in {h.product_id for h in index.search(q, 50, filter={"in_stock": True})[0]}
    assert [h.product_id for h in index.search(q, 5, filter={"promo": "summer"})[0]] == ["p0"]
    with pytest.raises(IndexStoreError, match="no entries for product 'nope'"):
        index.update_metadata("nope", in_stock=True)
    with pytest.raises(IndexStoreError, match="record field"):
        index.update_metadata("p0", label="x")


def test_remove_by_id_and_product(filled):
    index, recs, vecs = filled
    n = len(index)
    p1 = [r.id for r in recs if r.product_id == "p1"]
    assert index.remove(ids=["img/0003.jpg", "img/0004.jpg", "missing"]) == 2
    assert index.remove(product_ids=["p1"]) == len(p1)
    assert index.remove(product_ids=["p1"]) == 0
    assert len(index) == n - 2 - len(p1)
    assert index.get("img/0003.jpg") is None and index.records("p1") == []
    gone = {"img/0003.jpg", "img/0004.jpg", *p1}
    hits = index.search(vecs[3], 400, group_by_product=False)[0]
    assert len(hits) == len(index) and not gone & {h.record.id for h in hits}
    keep = [i for i, r in enumerate(recs) if r.id not in gone]
    q = vecs[[3, 4, 10]]
    assert_same(ids_scores(index.search(q, 5)), brute_force([recs[i] for i in keep], vecs[keep], q, 5))
    with pytest.raises(IndexStoreError):
        index.remove()


def test_more_like_this_excludes_the_product(filled):
    index, recs, vecs = filled
    rows = [i for i, r in enumerate(recs) if r.product_id == "p2"]
    hits = index.more_like_this("p2", 5)
    assert len(hits) == 5 and "p2" not in {h.product_id for h in hits}
    mean = unit(vecs[rows].mean(axis=0))
    assert_same(ids_scores([hits]), brute_force(recs, vecs, mean, 5, exclude={"p2"}))
    milk = index.more_like_this("p2", 3, filter={"coarse_label": "Milk"})
    assert all(h.record.coarse_label == "Milk" for h in milk) and len(milk) == 3
    with pytest.raises(IndexStoreError, match="no entries"):
        index.more_like_this("nope")


def test_add_errors_and_upsert(filled):
    index, recs, vecs = filled
    n = len(index)
    with pytest.raises(IndexStoreError, match="already in the index"):
        index.add([recs[0]], vecs[:1])
    new = IndexRecord("new/1", "pn", "new")
    with pytest.raises(IndexStoreError, match="duplicate entry id"):
        index.add([new, new], vecs[:2])
    with pytest.raises(IndexStoreError, match=r"expected shape \(N, 16\)"):
        index.add([new], np.ones((1, DIM + 1)))
    bad = vecs[:1].copy()
    bad[0, 3] = np.nan
    with pytest.raises(IndexStoreError, match="NaN"):
        index.add([new], bad)
    with pytest.raises(IndexStoreError, match="all zeros"):
        index.add([new], np.zeros((1, DIM)))
    with pytest.raises(IndexStoreError, match="2 records but 1 vectors"):
        index.add([new, IndexRecord("new/2", "pn", "new")], vecs[:1])
    assert len(index) == n  # failed adds change nothing
    moved = unit(-vecs[0])
    index.upsert([IndexRecord(recs[0].id, "p-moved", "moved"), new], np.vstack([moved, 2 * vecs[1]]))
    assert len(index) == n + 1
    assert index.get(recs[0].id).product_id == "p-moved"
    np.testing.assert_allclose(index.vectors([recs[0].id, "new/1"]), np.vstack([moved, vecs[1]]), atol=1e-6)
    top = index.search(moved, 1, group_by_product=False)[0][0]
    assert top.record.id == recs[0].id and top.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(IndexStoreError, match="not in the index"):
        index.vectors(["nope"])


def test_persistence_round_trip(filled, tmp_path):
    index, _, vecs = filled
    index.remove(product_ids=["p5"])
    index.update_metadata("p6", in_stock=True)
    queries = np.random.default_rng(4).standard_normal((3, DIM))
    before = ids_scores(index.search(queries, 5, filter={"in_stock": True}))
    records = sorted(index.records(), key=lambda r: r.id)
    index.save()
    where = index.path if index.kind == "faiss" else index.uri
    index.close()
    again = open_index(where)
    try:
        assert again.kind == index.kind and again.dim == DIM and len(again) == len(records)
        assert sorted(again.records(), key=lambda r: r.id) == records
        assert_same(ids_scores(again.search(queries, 5, filter={"in_stock": True})), before)
        ids = [r.id for r in records[:5]]
        np.testing.assert_allclose(again.vectors(ids), vecs[[int(i[4:8]) for i in ids]], atol=1e-6)
        assert again.get(records[0].id).metadata == records[0].metadata
    finally:
        again.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_duplicates_finds_planted_groups(backend, tmp_path):
    from skulens.search.duplicates import near_duplicates

    rng = np.random.default_rng(5)
    base = unit(rng.standard_normal((300, 32)))  # random 32-d unit vectors: pairwise cosine < ~0.7
    recs = [IndexRecord(f"b{i}", f"p{i}", "x", coarse_label="A" if i % 2 else "B") for i in range(300)]
    planted = {
        ("b1", "dup/1"): "p1",  # same product photographed twice
        ("b2", "dup/2"): "p-other",  # the same photo under another product: a likely mislabel
        ("b3", "dup/3a"): "p3",
    }
    extra_recs, extra_vecs = [], []
    for (orig, new), pid in planted.items():
        i = int(orig[1:])
        extra_recs.append(IndexRecord(new, pid, "x", coarse_label=recs[i].coarse_label))
        extra_vecs.append(unit(base[i] + 0.01 * rng.standard_normal(32)))
    # a chain: b3 ~ dup/3a ~ dup/3b
    extra_recs.append(IndexRecord("dup/3b", "p3", "x", coarse_label="A"))
    extra_vecs.append(unit(extra_vecs[2] + 0.01 * rng.standard_normal(32)))
    index = new_index(backend, tmp_path, 32)
    index.add(recs + extra_recs, np.vstack([base, *extra_vecs]))
    groups = near_duplicates(index, threshold=0.97, k=5, batch_size=64)
    assert [g.ids for g in groups] == [("b2", "dup/2"), ("b1", "dup/1"), ("b3", "dup/3a", "dup/3b")] or \
        [g.ids for g in groups] == [("b2", "dup/2"), ("b3", "dup/3a", "dup/3b"), ("b1", "dup/1")]
    assert groups[0].cross_product and groups[0].product_ids == ("p-other", "p2")
    assert not any(g.cross_product for g in groups[1:])
    chain = next(g for g in groups if len(g.ids) == 3)
    assert len(chain.pairs) >= 2 and chain.min_score >= 0.97 and chain.max_score >= chain.min_score
    only_a = near_duplicates(index, threshold=0.97, k=5, filter={"coarse_label": "A"})
    assert {g.ids for g in only_a} == {("b1", "dup/1"), ("b3", "dup/3a", "dup/3b")}
    assert near_duplicates(index, threshold=0.9999, k=5) == []
    index.close()


# ---------------------------------------------------------------------------------------------
# FAISS: ANN structures, thresholds, tombstones, corrupt files


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n // 20, dim)))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)) / np.sqrt(dim))


@pytest.mark.parametrize("ann", ["hnsw", "ivf", "ivfsq8", "ivfpq"])
def test_faiss_ann_recall_and_filters(tmp_path, ann):
    vecs = clustered(5000)
    recs = [IndexRecord(f"e{i}", f"p{i // 2}", "x", coarse_label=f"c{i % 50}", metadata={"rare": i % 500 == 0})
            for i in range(5000)]
    # 32-d PQ codes of the default 4 bytes are too coarse for this check; at 1280-d the default is 160 bytes
    options = {"pq_m": 16, "rerank": 10} if ann == "ivfpq" else {}
    index = create_index("faiss", tmp_path / ann, 32, ann=ann, **options)
    index.add(recs, vecs)
    index.optimize()
    assert index.info()["ann"] == ann
    queries = clustered(5000, seed=1)[:100]
    exact = brute_force(recs, vecs, queries, 10, group=False)
    got = index.search(queries, 10, group_by_product=False)
    recall = np.mean([len({h.record.id for h in g} & {i for i, _ in w}) / 10 for g, w in zip(got, exact)])
    assert recall >= 0.9, recall
    # a filter keeping 2% of entries (100) and one keeping 10 must still return k matches, all matching
    for flt, k in (({"coarse_label": "c7"}, 10), ({"rare": True}, 10)):
        res = index.search(queries[:5], k, filter=flt, group_by_product=False)
        assert all(len(row) == k for row in res)
        assert all(record_matches(h.record, compile_filter(flt)) for row in res for h in row)
    assert_same(ids_scores(index.search(queries[:5], 10, filter={"rare": True}, group_by_product=False)),
                brute_force(recs, vecs, queries[:5], 10, {"rare": True}, group=False))
    index.remove(ids=[f"e{i}" for i in range(0, 5000, 7)])  # tombstones inside the ANN structure
    res = index.search(queries[:10], 10, group_by_product=False)
    assert all(len(row) == 10 and all(int(h.record.id[1:]) % 7 for h in row) for row in res)
    index.save()
    again = open_index(tmp_path / ann)
    assert again.info()["ann"] == ann and again._ann is not None  # loaded from disk, not rebuilt
    assert ids_scores(again.search(queries[:10], 10, group_by_product=False)) == ids_scores(res)
    index.close()
    again.close()


def test_faiss_auto_switches_structure_with_size(tmp_path):
    vecs = clustered(3000)
    recs = [IndexRecord(f"e{i}", f"p{i}", "x") for i in range(3000)]
    index = create_index("faiss", tmp_path / "auto", 32, exact_threshold=2000)
    index.add(recs[:1500], vecs[:1500])
    assert index.info()["ann"] == "flat"
    index.add(recs[1500:], vecs[1500:])
    from skulens.search._faiss import AUTO_ANN

    assert index.info()["ann"] == AUTO_ANN
    index.remove(ids=[f"e{i}" for i in range(2100)])  # below threshold / 2: back to exact, compacted
    info = index.info()
    assert info["ann"] == "flat" and info["rows"] == info["entries"] == 900
    assert [h.record.id for h in index.search(vecs[2500], 1)[0]] == ["e2500"]


def test_faiss_save_writes_only_what_changed(tmp_path):
    recs, vecs = make_data()
    index = create_index("faiss", tmp_path / "idx", DIM)
    index.add(recs, vecs)
    index.save()
    first = json.loads((tmp_path / "idx" / "index.json").read_text())
    index.update_metadata("p1", in_stock=False)
    index.save()
    second = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert second["files"]["vectors"] == first["files"]["vectors"]  # not rewritten
    assert second["files"]["records"] != first["files"]["records"]
    assert sorted(set(os.listdir(tmp_path / "idx")) - {".lock"}) == sorted(["index.json", *filter(None, second["files"].values())])


def test_faiss_save_whose_folder_sync_fails_after_the_swap_is_made(tmp_path, monkeypatch, caplog):
    """The manifest swap is the commit point: a folder fsync failing after it raised, and the service answered
    "not made" (and reverted) a change that was on disk."""
    from skulens.search import _faiss

    recs, vecs = make_data()
    index = create_index("faiss", tmp_path / "idx", DIM)
    index.add(recs[:100], vecs[:100])
    index.save()
    real = _faiss._fsync_path

    def folder_sync_fails(path):
        if Path(path).is_dir():
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(_faiss, "_fsync_path", folder_sync_fails)
    index.add(recs[100:], vecs[100:])
    with caplog.at_level("WARNING", logger="skulens.search._faiss"):
        index.save()  # no error: the change is in the manifest on disk
    assert "saved, but its folder could not be synced" in caplog.text
    assert len(open_index(tmp_path / "idx")) == len(recs) == len(index)
    assert sorted(set(os.listdir(tmp_path / "idx")) - {".lock"}) == sorted(
        ["index.json", *filter(None, json.loads((tmp_path / "idx" / "index.json").read_text())["files"].values())])


def test_faiss_revert_drops_what_was_not_saved_and_keeps_a_failed_revert_harmless(tmp_path):
    recs, vecs = make_data()
    index = create_index("faiss", tmp_path / "idx", DIM)
    index.add(recs[:100], vecs[:100])
    assert index.revert() and len(index) == 0  # never saved: empty, as the disk holds nothing
    index.add(recs[:100], vecs[:100])
    index.save()
    want = ids_scores(index.search(vecs[:5], k=3))
    index.add(recs[100:], vecs[100:])
    index.update_metadata("p1", in_stock=False)
    index.remove(product_ids=["p2"])
    revision = index.revision
    assert index.revert()
    assert len(index) == 100 and index.revision > revision  # a cache keyed on the revision is never reused
    assert ids_scores(index.search(vecs[:5], k=3)) == want
    assert {r.metadata["in_stock"] for r in index.records("p1")} == {recs[1].metadata["in_stock"]}
    index.add(recs[100:], vecs[100:])  # still writable after the revert, and saved as usual
    index.save()
    assert len(open_index(tmp_path / "idx")) == len(recs)
    (tmp_path / "idx" / "index.json").write_text("{}")
    with pytest.raises(IndexStoreError):
        index.revert()
    assert len(index) == len(recs)  # an unreadable disk copy leaves the index as it was


def test_open_errors_are_one_line(tmp_path):
    def err(path) -> str:
        with pytest.raises(IndexStoreError) as e:
            open_index(path)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "no index here" in err(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "not a skulens FAISS index" in err(tmp_path / "empty")
    assert "no Milvus Lite database" in err(tmp_path / "missing.db")
    recs, vecs = make_data()
    index = create_index("faiss", tmp_path / "idx", DIM, ann="ivf")
    index.add(recs * 1, vecs)
    index.add([IndexRecord(f"more/{i}", "pm", "m") for i in range(1000)], clustered(1000, DIM))
    index.save()
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    vec_file = tmp_path / "idx" / manifest["files"]["vectors"]
    data = vec_file.read_bytes()
    vec_file.write_bytes(data[:-100])  # truncated
    assert "corrupt index" in err(tmp_path / "idx")
    vec_file.write_bytes(data)
    ann_file = tmp_path / "idx" / manifest["files"]["ann"]
    ann_bytes = ann_file.read_bytes()
    ann_file.unlink()
    assert "is missing" in err(tmp_path / "idx")
    ann_file.write_bytes(ann_bytes)
    assert len(open_index(tmp_path / "idx")) == len(recs) + 1000
    (tmp_path / "idx" / "index.json").write_text("{not json")
    assert "unreadable manifest" in err(tmp_path / "idx")
    with pytest.raises(IndexStoreError, match="already exists"):
        create_index("faiss", tmp_path / "idx", DIM)
    with pytest.raises(IndexStoreError, match="unknown index kind"):
        create_index("annoy", tmp_path / "a", DIM)
    with pytest.raises(IndexStoreError, match="unknown FAISS index options"):
        create_index("faiss", tmp_path / "b", DIM, nprobes=3)
    with pytest.raises(IndexStoreError, match="metric"):
        create_index("faiss", tmp_path / "c", DIM, metric="l2")


def test_record_validation():
    with pytest.raises(IndexStoreError, match="not supported"):
        IndexRecord("a", "p", "l", metadata={"tags": ["x"]})
    with pytest.raises(IndexStoreError, match="record field"):
        IndexRecord("a", "p", "l", metadata={"label": "x"})
    with pytest.raises(IndexStoreError, match="non-empty string"):
        IndexRecord("", "p", "l")
    with pytest.raises(IndexStoreError, match="too large"):
        IndexRecord("a", "p", "l", metadata={"n": 2**60})
    r = IndexRecord("a", "p", "l", metadata={"n": np.int64(3), "x": np.float32(0.5)})
    assert type(r.metadata["n"]) is int and type(r.metadata["x"]) is float
    with pytest.raises(TypeError):
        r.metadata["n"] = 4  # read-only
    assert IndexRecord.from_dict(r.to_dict()) == r and hash(r) == hash(IndexRecord.from_dict(r.to_dict()))
    with pytest.raises(TypeError):
        r.metadata.update(n=5)
    import dataclasses
    import pickle

    hit = SearchHit("p", 0.5, r)
    as_json = json.loads(json.dumps(dataclasses.asdict(hit)))  # what a REST layer does with a hit
    assert as_json["record"]["metadata"] == {"n": 3, "x": 0.5}
    assert pickle.loads(pickle.dumps(r)) == r


def test_search_hit_json_is_one_shape():
    """`SearchHit.to_dict` is what `skulens search` prints and what the REST API's hits are built from."""
    r = IndexRecord("a.jpg", "p", "l", "C", "Title", "text", "a.jpg", {"in_stock": True})
    d = SearchHit("p", np.float32(0.123456789), r).to_dict()
    assert d == {"product_id": "p", "score": 0.123457, "label": "l", "coarse_label": "C", "title": "Title",
                 "image": "a.jpg", "metadata": {"in_stock": True}}
    assert json.loads(json.dumps(d)) == d

def test_parse_filter_from_strings():
    from skulens.search.index import parse_filter

    got = parse_filter(["coarse_label=Milk", "in_stock=true", "shelf=[1, 3]", 'sku="007"', "price=2.5",
                        "title_word=O'Neil \"Best\"", "note=null"])
    assert got == {"coarse_label": "Milk", "in_stock": True, "shelf": [1, 3], "sku": "007", "price": 2.5,
                   "title_word": "O'Neil \"Best\"", "note": "null"}
    with pytest.raises(IndexStoreError, match="expected key=value"):
        parse_filter(["coarse_label"])
    with pytest.raises(IndexStoreError, match="cannot filter on 'title'"):
        parse_filter(["title=x"])
    # a review's: a repeated key kept only its last value (the first condition dropped, silently), and a JSON
    # list cut short was matched as the text it is (no hits, no error)
    with pytest.raises(IndexStoreError, match="'coarse_label' given twice"):
        parse_filter(["coarse_label=Juice", "coarse_label=Milk"])
    for bad in ("price=[12.5,", 'coarse_label=["Oat-Milk"', 'brand="Arla'):
        with pytest.raises(IndexStoreError, match="not a JSON list or string"):
            parse_filter([bad])
    assert parse_filter(['tag="[promo]"']) == {"tag": "[promo]"}  # such text, written as a JSON string


def test_metadata_from_a_csv_and_a_filter_are_typed_alike(tmp_path: Path) -> None:
    from skulens.search.catalogue_index import read_metadata_table
    from skulens.search.index import parse_filter, typed_value

    assert [typed_value(v) for v in ("TRUE", "false", "3", "-2.5", "1e3", "0")] == [True, False, 3, -2.5, 1000.0, 0]
    # text that only looks like a number stays text: leading zeros, separators, NaN and Infinity
    assert [typed_value(v) for v in ("0012345", "1_000", "NAN", "Infinity", "3.", "yes", "1e400",
                                     "73513537123456789012")] == [
        "0012345", "1_000", "NAN", "Infinity", "3.", "yes", "1e400", "73513537123456789012"]
    assert typed_value(" -0 ") == 0 and typed_value("1.0") == 1.0
    table = tmp_path / "meta.csv"
    table.write_text("product_id,ean,brand,price,in_stock\nmilk,0012345,NAN,1.90,TRUE\n", encoding="utf-8")
    meta = read_metadata_table(table)["milk"]
    assert meta == {"ean": "0012345", "brand": "NAN", "price": 1.9, "in_stock": True}
    wanted = parse_filter(["ean=0012345", "brand=NAN", "price=1.90", "in_stock=TRUE"])
    assert all(meta[k] == v and type(meta[k]) is type(v) for k, v in wanted.items())
    assert parse_filter(['sku="3"', "shelf=[1, 3]"]) == {"sku": "3", "shelf": [1, 3]}
    # a table's mistakes are told by line and against the table, not silently kept or blamed on a photo
    from skulens.data.catalogue import CatalogueError
    from skulens.search.index import IndexStoreError

    again = ":3: product 'milk' again (first on line 2)"
    for body, error, needle in (("product_id,in_stock\nmilk,true\nmilk,false\n", CatalogueError, again),
                                ("product_id,in_stock\nmilk,true,extra\n", CatalogueError, ":2: more cells"),
                                ("product_id,in stock\nmilk,true\n", IndexStoreError, "meta.csv: header"),
                                # the last in_stock won, silently
                                ("product_id,in_stock,in_stock\nmilk,true,false\n", CatalogueError,
                                 "header: column 'in_stock' is named twice")):
        table.write_text(body, encoding="utf-8")
        with pytest.raises(error, match=re.escape(needle)):
            read_metadata_table(table)
    for missing in (table.with_name("nofile.csv"), table.parent):  # a bare FileNotFoundError / IsADirectoryError
        with pytest.raises(CatalogueError, match="cannot read it"):
            read_metadata_table(missing)


@pytest.mark.skipif("milvus" not in BACKENDS, reason="pymilvus / milvus-lite missing")
def test_a_milvus_lite_file_another_process_holds_is_named_so(tmp_path):
    """Milvus Lite serves one process at a time: a search while `serve` held the file was "cannot connect to Milvus
    (Open local milvus failed)" under two tracebacks."""
    import subprocess
    import sys

    index = create_index("milvus", tmp_path / "x.db", 8)
    index.add([IndexRecord("e0", "p0", "x")], unit(np.ones((1, 8))))
    index.close()
    code = (f"import sys; from skulens.search.index import open_index; ix = open_index({str(tmp_path / 'x.db')!r}); "
            "print('open', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(IndexStoreError, match="another process has this Milvus Lite file open"):
            open_index(tmp_path / "x.db")
    finally:
        holder.communicate("\n", timeout=60)
    again = open_index(tmp_path / "x.db")  # free again once the other process is gone
    assert len(again) == 1
    again.close()


def test_milvus_expressions_escape_strings():
    from skulens.search._milvus import milvus_expr

    expr = milvus_expr(compile_filter({"coarse_label": 'a"b\\c', "label": ["x", "y"], "in_stock": True,
                                       "shelf": [1, 2.5]}), frozenset({"p'1"}))
    assert expr == ('coarse_label == "a\\"b\\\\c" and label in ["x", "y"] and metadata["in_stock"] == true and '
                    '(metadata["shelf"] == 1 or metadata["shelf"] == 2.5) and product_id not in ["p\'1"]')


@pytest.mark.skipif("milvus" not in BACKENDS, reason="pymilvus / milvus-lite missing")
def test_milvus_default_index_recall(tmp_path):
    vecs = clustered(3000)
    recs = [IndexRecord(f"e{i}", f"p{i}", "x") for i in range(3000)]
    index = create_index("milvus", tmp_path / "ann.db", 32, collection="products")
    index.add(recs, vecs)
    index.optimize()
    assert index.info()["ann"] == "IVF_FLAT"
    queries = clustered(3000, seed=1)[:50]
    exact = brute_force(recs, vecs, queries, 10, group=False)
    got = index.search(queries, 10, group_by_product=False)
    recall = np.mean([len({h.record.id for h in g} & {i for i, _ in w}) / 10 for g, w in zip(got, exact)])
    assert recall >= 0.9, recall
    # selective filters: the IVF lists probed may hold too few matches; every match must still come back
    index.update_metadata("p7", rare=True)
    index.update_metadata("p2900", rare=True)
    far = index.search(-vecs[7], 10, filter={"rare": True}, group_by_product=False)[0]
    assert sorted(h.record.id for h in far) == ["e2900", "e7"]
    few = index.search(queries[:5], 10, filter={"product_id": [f"p{i}" for i in range(0, 3000, 100)]})
    assert all(len(row) == 10 for row in few)
    assert_same(ids_scores(few), brute_force(recs, vecs, queries[:5], 10,
                                             {"product_id": [f"p{i}" for i in range(0, 3000, 100)]}))
    with pytest.raises(IndexStoreError, match="already exists"):
        create_index("milvus", tmp_path / "ann.db", 32, collection="products")
    index.close()
    with pytest.raises(IndexStoreError, match="no collection 'skulens'"):
        open_index(tmp_path / "ann.db")
    again = open_index(tmp_path / "ann.db", collection="products")
    assert len(again) == 3000 and again.dim == 32
    again.close()
    # LOCATION#NAME: what every command that takes only an index location passes for another collection
    named = open_index(f"{tmp_path / 'ann.db'}#products")
    assert len(named) == 3000
    named.close()
    with pytest.raises(IndexStoreError, match="the option 'other'"):
        open_index(f"{tmp_path / 'ann.db'}#products", collection="other")


def test_index_module_imports_no_backend():
    code = ("import sys, skulens.search.index, skulens.search.duplicates; "
            "print(sorted(m for m in ('faiss', 'pymilvus', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# crash safety


def _crash_at_step(tmp_path, step: int) -> bool:
    """Save a changed index with the step-th fsync raising (as if killed there); True if it got through."""
    import skulens.search._faiss as fb

    index = open_index(tmp_path / "idx")
    index.update_metadata("p1", step=step)
    index.remove(product_ids=["p2"])
    index.add([IndexRecord(f"s{step}", "ps", "s")], np.ones((1, DIM)))
    calls = {"n": 0}
    real = fb._fsync_path

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == step:
            raise OSError("killed here")
        real(path)

    fb._fsync_path = flaky
    try:
        index.save()
        return True
    except OSError:
        return False
    finally:
        fb._fsync_path = real


def test_interrupted_save_leaves_old_or_new_index(tmp_path):
    recs, vecs = make_data()
    index = create_index("faiss", tmp_path / "idx", DIM)
    index.add(recs, vecs)
    index.save()
    n, n2 = len(index), len(index.records("p2"))
    step, outcomes = 1, []
    while not _crash_at_step(tmp_path, step):  # every fsync of a save, in turn, "kills" it
        again = open_index(tmp_path / "idx")
        if again.get(f"s{step}") is None:  # the old index, whole
            outcomes.append("old")
            assert len(again) == n and again.records("p1")[0].metadata.get("step") is None
        else:  # killed after the manifest swap: the new index, whole
            outcomes.append("new")
            assert len(again) == n - n2 + 1 and again.records("p1")[0].metadata["step"] == step
        again.close()
        step += 1
    # records, vectors and manifest are synced before the swap; the directory after it, where a failed sync no
    # longer undoes the save (test_faiss_save_whose_folder_sync_fails_after_the_swap_is_made): it got through
    assert outcomes == ["old", "old", "old"], outcomes
    again = open_index(tmp_path / "idx")
    assert again.get(f"s{step}") is not None and again.records("p2") == []
    names = set(os.listdir(tmp_path / "idx"))
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert names - {".lock"} == {"index.json", *filter(None, manifest["files"].values())}  # leftovers cleaned


_SAVER = r"""
import sys
import numpy as np
from skulens.search.index import IndexRecord, create_index, open_index

path, D = sys.argv[1], 64

def vectors(gen):
    n = 3000 + 37 * (gen % 40)
    v = np.random.default_rng(gen).standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

try:
    index = open_index(path)
    gen = max(r.metadata["gen"] for r in index.records())
except Exception:
    index = create_index("faiss", path, D, ann="ivf", nlist=16)
    gen = 0
while True:
    gen += 1
    if gen % 2:  # a new set of vectors: every file is rewritten
        v = vectors(gen)
        index.remove(ids=[r.id for r in index.records()])
        index.add([IndexRecord(f"e{i}", f"p{i % 300}", "l", metadata={"gen": gen, "vgen": gen})
                   for i in range(len(v))], v)
    else:  # a metadata update: only the records file is rewritten
        for p in index.product_ids():
            index.update_metadata(p, gen=gen)
    index.save()
    print(gen, flush=True)
"""


def test_sigkill_during_save_leaves_a_loadable_index(tmp_path):
    path = tmp_path / "killed"
    rng = np.random.default_rng(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last_seen = 0
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True,
                                env=env)
        first = proc.stdout.readline()  # one complete save (of this process) before the kill
        assert first.strip(), f"saver died: {proc.wait()}"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        printed = [int(first), *map(int, proc.stdout.read().split())]
        proc.wait()
        index = open_index(path)
        gens = {r.metadata["gen"] for r in index.records()}
        vgens = {r.metadata["vgen"] for r in index.records()}
        assert len(gens) == 1 and len(vgens) == 1, (gens, vgens)  # never a mix of two saves
        gen, vgen = gens.pop(), vgens.pop()
        assert printed[-1] <= gen <= printed[-1] + 1 and gen >= last_seen  # the last save, or the one killed
        v = np.random.default_rng(vgen).standard_normal((3000 + 37 * (vgen % 40), 64)).astype(np.float32)
        assert len(index) == len(v)
        ids = [f"e{i}" for i in range(0, len(v), 97)]
        np.testing.assert_allclose(index.vectors(ids), v[::97] / np.linalg.norm(v[::97], axis=1, keepdims=True),
                                   atol=1e-6)
        hit = index.search(v[5], 1, group_by_product=False)[0][0]
        assert hit.record.id == "e5"
        index.close()
        last_seen = gen


@pytest.mark.parametrize(("fraction", "action"), [(0.5, "loaded into memory"), (0.0, "paged in")])
def test_faiss_warm_loads_or_pages_in_the_mapped_vectors_and_answers_the_same(tmp_path, fraction, action):
    vecs = clustered(3000)
    recs = [IndexRecord(f"e{i}", f"p{i // 3}", "x") for i in range(3000)]
    index = create_index("faiss", tmp_path / "w", 32)
    index.add(recs, vecs)
    index.save()
    index.close()
    again = open_index(tmp_path / "w")
    assert isinstance(again._buf, np.memmap)  # reopened: mapped from disk, paged in by the first searches
    before = ids_scores(again.search(vecs[:20], 10, group_by_product=False))
    report = again.warm(memory_fraction=fraction)
    assert report["action"].startswith(action) and report["vectors"] == 3000 and report["seconds"] >= 0
    assert isinstance(again._buf, np.memmap) == (fraction == 0.0)
    assert ids_scores(again.search(vecs[:20], 10, group_by_product=False)) == before
    again.add([IndexRecord("new", "pnew", "x")], vecs[:1] + 0.01)  # still writable after the in-memory copy
    assert again.get("new") is not None and len(again) == 3001
    again.close()


def test_record_ids_stay_relative_when_split_folders_are_links(tiny_catalogue: Path, tmp_path: Path) -> None:
    """A catalogue whose split folders are symbolic links (the README allows it): ids were absolute paths."""
    import shutil

    from skulens.data.catalogue import load_catalogue
    from skulens.search.catalogue_index import catalogue_records

    root = tmp_path / "cat"
    shutil.copytree(tiny_catalogue.parent, root)
    shutil.move(root / "train", tmp_path / "elsewhere")
    (root / "train").symlink_to(tmp_path / "elsewhere")
    records, _ = catalogue_records(load_catalogue(root / tiny_catalogue.name), catalogue_photos=False)
    assert records and all(r.id.startswith("train/") for r in records), records[0].id


# ---------------------------------------------------------------------------------------------
# two writers of one FAISS index (review of session 38)


def _update_and_save(path: str, product: str, value: int, barrier) -> str:  # a process of the test below
    from skulens.search.index import IndexStoreError, open_index

    index = open_index(path)
    index.update_metadata(product, mark=value)
    barrier.wait()  # every writer has opened the same version before any saves
    try:
        index.save()
        return "saved"
    except IndexStoreError as e:
        return str(e)


def test_two_writers_of_one_faiss_index_never_break_it_or_lose_a_saved_change(tmp_path: Path) -> None:
    """Two `skulens index update` (or enrol) processes at once wrote the same version's file names, and one deleted
    the files the other's manifest named: the index no longer opened ("records-000003.jsonl is missing"), and
    both commands had said they succeeded. A save over another process's newer save is now refused."""
    import multiprocessing

    recs, vecs = make_data(30)
    index = create_index("faiss", tmp_path / "idx", DIM)
    index.add(recs, vecs)
    index.save()
    products = sorted({r.product_id for r in recs})[:4]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(len(products))
    with ctx.Pool(len(products)) as pool:
        outcomes = pool.starmap(_update_and_save, [(str(tmp_path / "idx"), p, i, barrier)
                                                   for i, p in enumerate(products)])
    saved = [p for p, o in zip(products, outcomes, strict=True) if o == "saved"]
    assert len(saved) == 1, outcomes  # the first save wins; the others were opened from the version it replaced
    assert all("changed by another process" in o and "not saved" in o for o in outcomes if o != "saved"), outcomes
    again = open_index(tmp_path / "idx")  # opens: every file its manifest names is there
    marks = {p: again.records(p)[0].metadata.get("mark") for p in products}
    assert marks == {p: (products.index(p) if p in saved else None) for p in products}
    # in one process too: a stale object is refused, a fresh one saves
    a, b = open_index(tmp_path / "idx"), open_index(tmp_path / "idx")
    a.update_metadata(products[0], mark=10)
    a.save()
    b.update_metadata(products[1], mark=11)
    with pytest.raises(IndexChangedError, match="not saved"):
        b.save()
    assert b.records(products[0])[0].metadata.get("mark") == 10  # it now holds the other process's save
    assert b.records(products[1])[0].metadata.get("mark") != 11
    b.update_metadata(products[1], mark=11)
    b.save()
    final = open_index(tmp_path / "idx")
    assert [final.records(p)[0].metadata.get("mark") for p in products[:2]] == [10, 11]
    # an index built again over it (--overwrite) replaces it, as before
    fresh = create_index("faiss", tmp_path / "idx", DIM, overwrite=True)
    fresh.add(recs[:3], vecs[:3])
    fresh.save()
    assert len(open_index(tmp_path / "idx")) == 3


def test_grouped_search_fetches_more_until_k_products_are_found(tmp_path: Path) -> None:
    """Mutation review: with each product's entries few, the first fetch always held k products, so dropping the
    second fetch went unnoticed; here one product's 100 entries fill the first fetch."""
    rng = np.random.default_rng(0)
    q = np.zeros(16, np.float32)
    q[0] = 1
    vecs = unit(np.concatenate([q + 0.05 * rng.standard_normal((100, 16)), q + rng.standard_normal((9, 16))]))
    recs = [IndexRecord(id=f"b{i}", product_id="big", label="big") for i in range(100)]
    recs += [IndexRecord(id=f"o{i}", product_id=f"other{i}", label=f"other{i}") for i in range(9)]
    idx = create_index("faiss", tmp_path / "idx", 16)
    idx.add(recs, vecs)
    hits = idx.search(q, k=3)[0]
    assert len(hits) == 3 and hits[0].product_id == "big" and len({h.product_id for h in hits}) == 3
