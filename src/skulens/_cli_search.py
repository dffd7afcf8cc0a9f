"""`skulens index | search | align | enroll | retrain | fuse`: the search side of the CLI (no torch at import)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_search_commands"]


def _print(msg: str) -> None:
    print(msg, file=sys.stderr)


def _filters(items: list[str] | None) -> dict[str, Any] | None:
    """--filter coarse_label=Milk --filter in_stock=true --filter shelf=[1,3] (any of)."""
    if not items:
        return None
    from .search.index import parse_filter

    return parse_filter(items)


def _hits_json(hits: list[Any]) -> list[dict[str, Any]]:
    return [{"product_id": h.product_id, "score": round(float(h.score), 6), "label": h.record.label,
             "coarse_label": h.record.coarse_label, "title": h.record.title, "image": h.record.image,
             "metadata": dict(h.record.metadata)} for h in hits]


def cmd_index_build(ns: argparse.Namespace) -> int:
    from .api import load
    from .cli import _resolve_data
    from .data.catalogue import load_catalogue
    from .search.catalogue_index import build_catalogue_index, read_metadata_table

    model = load(ns.model)
    cat = load_catalogue(_resolve_data(ns.catalogue))
    meta = read_metadata_table(ns.metadata) if ns.metadata else None
    options = {k: v for k, v in (("ann", ns.ann), ("exact_threshold", ns.exact_threshold), ("nprobe", ns.nprobe),
                                 ("collection", ns.collection), ("index_type", ns.index_type)) if v is not None}
    res = build_catalogue_index(model, cat, ns.out, backend=ns.backend, splits=ns.splits,
                                catalogue_photos=ns.catalogue_photos, metadata=meta, progress=not ns.quiet,
                                overwrite=ns.overwrite, **options)
    _print(f"index {ns.out} ({ns.backend}): {res.entries} photos of {res.products} products")
    if res.failed:
        _print(f"skipped {len(res.failed)} undecodable image(s), e.g. {res.failed[0][0]}: {res.failed[0][1]}")
    return 0


def cmd_index_info(ns: argparse.Namespace) -> int:
    from .search.index import open_index

    index = open_index(ns.index)
    products = {r.product_id for r in index.records()}
    print(json.dumps({"index": ns.index, "products": len(products), **index.info()}, indent=2, default=str))
    return 0


def cmd_index_update(ns: argparse.Namespace) -> int:
    from .search.index import open_index

    index = open_index(ns.index)
    values = _filters(ns.set) or {}
    index.update_metadata(ns.product, values)
    index.save()
    _print(f"{ns.product}: metadata {values}")
    return 0


def cmd_index_remove(ns: argparse.Namespace) -> int:
    from .search.index import open_index

    index = open_index(ns.index)
    n = index.remove(product_ids=ns.product or None, ids=ns.id or None)
    index.save()
    _print(f"removed {n} entr{'y' if n == 1 else 'ies'}")
    return 0


def cmd_index_duplicates(ns: argparse.Namespace) -> int:
    from .search.duplicates import near_duplicates
    from .search.index import open_index

    groups = near_duplicates(open_index(ns.index), threshold=ns.threshold, k=ns.k, filter=_filters(ns.filter),
                             progress=not ns.quiet)
    for g in groups:
        print(json.dumps({"ids": list(g.ids), "product_ids": list(g.product_ids), "cross_product": g.cross_product,
                          "min_score": round(g.min_score, 6), "max_score": round(g.max_score, 6)}))
    cross = sum(g.cross_product for g in groups)
    _print(f"{len(groups)} group(s) of near-duplicates at cosine >= {ns.threshold}; {cross} span several products "
           "(likely mislabels or duplicated listings)")
    return 0


def _engine(ns: argparse.Namespace, need_model: bool):
    from .api import load
    from .search.align import load_aligner
    from .search.engine import SearchEngine
    from .search.index import open_index

    index = open_index(ns.index)
    model_path = ns.model
    if need_model and not model_path:
        raise SystemExit("skulens search: --model BUNDLE is needed (the index does not record its model)")
    model = load(model_path) if model_path and (need_model or ns.mode != "text") else None
    aligner = load_aligner(ns.align or model_path) if model_path and not str(model_path).startswith("pretrained:") \
        else (load_aligner(ns.align) if ns.align else None)
    return SearchEngine(model, index, aligner)


def cmd_search(ns: argparse.Namespace) -> int:
    filt = _filters(ns.filter)
    engine = _engine(ns, need_model=bool(ns.image))
    if ns.image:
        results = engine.by_image(ns.image, k=ns.k, filter=filt)
        queries = ns.image
    elif ns.text:
        results = engine.by_text(ns.text, k=ns.k, filter=filt, mode=ns.mode)
        queries = ns.text
    else:
        results = [engine.more_like_this(p, k=ns.k, filter=filt) for p in ns.product]
        queries = ns.product
    for q, hits in zip(queries, results, strict=True):
        print(json.dumps({"query": q, "hits": _hits_json(hits)}))
    return 0


def cmd_align(ns: argparse.Namespace) -> int:
    from .api import load
    from .cli import _resolve_data
    from .data.catalogue import load_catalogue
    from .search.align import AlignConfig, product_sentences, train_aligner
    from .search.catalogue_index import catalogue_records
    from .search.embeddings import embed_paths

    model = load(ns.model)
    cat = load_catalogue(_resolve_data(ns.data))
    if not cat.products:
        raise SystemExit(f"skulens align: {cat.root} has no product texts (titles/descriptions) to align with")
    records, paths = catalogue_records(cat, splits=ns.splits, catalogue_photos=True)
    emb = embed_paths(model, paths, progress=not ns.quiet)
    labels = sorted({records[i].product_id for i in emb.kept} & set(cat.products))
    index = {p: i for i, p in enumerate(labels)}
    rows = [j for j, i in enumerate(emb.kept) if records[i].product_id in index]
    y = [index[records[emb.kept[j]].product_id] for j in rows]
    texts = [product_sentences(cat.products[p].title, cat.products[p].description, cat.products[p].info)
             for p in labels]
    aligner = train_aligner(emb.vectors[rows], y, texts, config=AlignConfig(steps=ns.steps), progress=not ns.quiet)
    out = aligner.save(ns.out or ns.model)
    _print(f"text alignment for {len(labels)} products from {len(rows)} photos: {out} "
           f"(final loss {aligner.info['final_loss']:.3f})")
    return 0


def cmd_enroll(ns: argparse.Namespace) -> int:
    from .cli import _expand_inputs
    from .search.enroll import enroll

    index = None
    if ns.index:
        from .search.index import open_index

        index = open_index(ns.index)
    res = enroll(ns.bundle, ns.product, _expand_inputs(ns.images), text=ns.text or "", title=ns.title or "",
                 coarse=ns.coarse, data=ns.data, index=index, progress=not ns.quiet)
    print(json.dumps({"label": res.label, "coarse_label": res.coarse_label, "coarse_inferred": res.coarse_inferred,
                      "photos": res.images, "skipped": [list(s) for s in res.skipped], "reference": res.reference,
                      "self_check": res.self_check, "index_entries": res.index_entries}))
    if res.coarse_inferred:
        _print(f"coarse class inferred from the photos: {res.coarse_label} (pass --coarse to set it)")
    return 0


def cmd_retrain(ns: argparse.Namespace) -> int:
    from .cli import _report_result, _train_overrides
    from .train.retrain import retrain

    overrides = {k: v for k, v in _train_overrides(ns).items() if k not in ("data", "out")}
    result = retrain(ns.bundle, out=ns.out, data=ns.data, extra=ns.extra or (), progress=not ns.quiet, **overrides)
    _report_result(result)
    return 0


def cmd_fuse(ns: argparse.Namespace) -> int:
    from .cli import _resolve_data
    from .search.fusion_eval import fuse_and_evaluate

    rep = fuse_and_evaluate(ns.bundle, _resolve_data(ns.data), out=ns.out, progress=not ns.quiet)
    print(json.dumps(rep, indent=2))
    return 0


def add_search_commands(sub: argparse._SubParsersAction) -> None:
    from .cli import _add_config_flags

    ix = sub.add_parser("index", help="build and maintain a product index (FAISS or Milvus)")
    isub = ix.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="embed a catalogue's photos into a new index")
    b.add_argument("--model", required=True, help="bundle (or pretrained:efficientnet_lite2) that embeds the photos")
    b.add_argument("--catalogue", "--data", dest="catalogue", help="catalogue (default: the grocery dataset)")
    b.add_argument("--out", required=True, help="index path: a folder (faiss) or a .db file / URI (milvus)")
    b.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    b.add_argument("--splits", nargs="+", default=["train"], help="catalogue splits whose photos are indexed")
    b.add_argument("--catalogue-photos", action=argparse.BooleanOptionalAction, default=True,
                   help="also index each product's catalogue photo")
    b.add_argument("--metadata", help="CSV: product_id + metadata columns (in_stock, price, ...)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    b.add_argument("--ann", choices=("auto", "flat", "hnsw", "ivf", "ivfsq8", "ivfpq"),
                   help="faiss: ANN structure (auto: exact below --exact-threshold entries, IVF-SQ8 above)")
    b.add_argument("--exact-threshold", type=int, help="faiss: exact search below this many entries (20000)")
    b.add_argument("--nprobe", type=int, help="faiss IVF: lists visited per query")
    b.add_argument("--collection", help="milvus: collection name (default skulens)")
    b.add_argument("--index-type", help="milvus: IVF_FLAT (Lite default), HNSW (server default), FLAT")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=cmd_index_build)
    inf = isub.add_parser("info", help="what an index holds")
    inf.add_argument("index")
    inf.set_defaults(func=cmd_index_info)
    u = isub.add_parser("update", help="change a product's metadata (no re-embedding)")
    u.add_argument("index")
    u.add_argument("--product", required=True)
    u.add_argument("--set", action="append", required=True, metavar="KEY=VALUE")
    u.set_defaults(func=cmd_index_update)
    r = isub.add_parser("remove", help="remove products or entries")
    r.add_argument("index")
    r.add_argument("--product", action="append", help="product id (repeatable)")
    r.add_argument("--id", action="append", help="entry id (repeatable)")
    r.set_defaults(func=cmd_index_remove)
    dd = isub.add_parser("duplicates", help="near-duplicate photos across the index (ANN, no N x N matrix)")
    dd.add_argument("index")
    dd.add_argument("--threshold", type=float, default=0.95, help="cosine similarity")
    dd.add_argument("-k", type=int, default=10, help="neighbours looked at per photo")
    dd.add_argument("--filter", action="append", metavar="KEY=VALUE")
    dd.add_argument("-q", "--quiet", action="store_true")
    dd.set_defaults(func=cmd_index_duplicates)

    s = sub.add_parser("search", help="find products by photo, by words, or like an indexed product")
    s.add_argument("--index", required=True)
    s.add_argument("--model", help="bundle that built the index (default: the one it records)")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", help="query photo(s)")
    q.add_argument("--text", nargs="+", help="query text(s), e.g. 'oat milk'")
    q.add_argument("--product", nargs="+", help="more like this indexed product id")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--filter", action="append", metavar="KEY=VALUE", help="e.g. coarse_label=Milk, in_stock=true")
    s.add_argument("--mode", choices=("hybrid", "aligned", "text"), default="hybrid", help="text search mode")
    s.add_argument("--align", help="text alignment file (default: the model bundle's)")
    s.set_defaults(func=cmd_search)

    a = sub.add_parser("align", help="learn the text -> image alignment that text search uses")
    a.add_argument("--model", required=True)
    a.add_argument("--data", help="catalogue with product titles/descriptions (default: the grocery dataset)")
    a.add_argument("--splits", nargs="+", default=["train"])
    a.add_argument("--steps", type=int, default=400)
    a.add_argument("--out", help="where to write it (default: inside the model bundle)")
    a.add_argument("-q", "--quiet", action="store_true")
    a.set_defaults(func=cmd_align)

    en = sub.add_parser("enroll", help="add a product to a trained model from a few photos (no retraining)")
    en.add_argument("bundle")
    en.add_argument("--product", required=True, help="the new product's label")
    en.add_argument("--images", nargs="+", required=True)
    en.add_argument("--text", help="description")
    en.add_argument("--title", help="display name (default: the label)")
    en.add_argument("--coarse", help="coarse class (default: inferred from the photos)")
    en.add_argument("--index", help="also add the photos to this index")
    en.add_argument("--data", help="the training catalogue, for reference photos (default: the card's)")
    en.add_argument("-q", "--quiet", action="store_true")
    en.set_defaults(func=cmd_enroll)

    rt = sub.add_parser("retrain", help="fine-tune again from a bundle, folding in enrolled and newly labelled photos")
    rt.add_argument("bundle")
    rt.add_argument("--out", required=True, help="new run directory")
    rt.add_argument("--data", help="the original catalogue (default: the one in the bundle's card)")
    rt.add_argument("--extra", action="append", help="extra labelled catalogue (repeatable), e.g. the review queue")
    rt.add_argument("--config", help="YAML/TOML/JSON config overrides")
    rt.add_argument("-q", "--quiet", action="store_true")
    _add_config_flags(rt)
    rt.set_defaults(func=cmd_retrain)

    fu = sub.add_parser("fuse", help="train and compare an image + text fusion head (listings with their own text)")
    fu.add_argument("bundle")
    fu.add_argument("--data", help="catalogue whose samples carry text (manifest 'text' or 'title' column)")
    fu.add_argument("--out", help="report folder (default: BUNDLE/fusion-report)")
    fu.add_argument("-q", "--quiet", action="store_true")
    fu.set_defaults(func=cmd_fuse)

    add_recommend_commands(sub)


def _item_vectors(ns: argparse.Namespace, cat: Any) -> dict[str, Any]:
    """Content vectors of the catalogue's products: text, plus catalogue photos when --model is given."""
    from .search.embeddings import content_vectors

    model = None
    if ns.model:
        from .api import load

        model = load(ns.model)
    return content_vectors(list(cat.products.values()), model)


def _recommender(ns: argparse.Namespace):
    from .cli import _resolve_data
    from .data.catalogue import load_catalogue
    from .search.recommend import create_recommender
    from .search.shopping_log import read_events

    events = read_events(ns.events)
    cat = load_catalogue(_resolve_data(ns.data)) if (ns.data or ns.kind != "popularity") else None
    kw: dict[str, Any] = {}
    if ns.kind != "popularity":
        assert cat is not None
        kw["item_vectors"] = _item_vectors(ns, cat)
    rec = create_recommender(ns.kind, **kw)
    rec.fit(events, catalogue=list(cat.products) if cat is not None else None)
    return rec, events


def _recs_json(recs: list[Any]) -> list[dict[str, Any]]:
    return [{"product_id": r.product_id, "score": round(float(r.score), 6), "reason": r.reason} for r in recs]


def cmd_recommend(ns: argparse.Namespace) -> int:
    if not ns.user and not ns.similar:
        raise SystemExit("skulens recommend: give --user USER_ID or --similar PRODUCT_ID")
    rec, _ = _recommender(ns)
    if ns.user:
        for u in ns.user:
            recs = rec.recommend(u, ns.k, exclude_seen=not ns.include_seen, seed_products=tuple(ns.seed_product or ()))
            print(json.dumps({"user_id": u, "recommendations": _recs_json(recs)}))
    for p in ns.similar or ():
        print(json.dumps({"product_id": p, "similar": _recs_json(rec.similar(p, ns.k))}))
    return 0


def cmd_recommend_generate(ns: argparse.Namespace) -> int:
    from .cli import _resolve_data
    from .data.catalogue import load_catalogue
    from .search.shopping_log import generate_shopping_log, write_events

    cat = load_catalogue(_resolve_data(ns.data))
    products = [(p, cat.hierarchy.get(p, p)) for p in cat.classes]
    events = generate_shopping_log(products, n_users=ns.users, seed=ns.seed)
    write_events(ns.out, events)
    _print(f"{ns.out}: {len(events)} SYNTHETIC events of {ns.users} users over {len(products)} products "
           "(see skulens.search.shopping_log for how they are generated)")
    return 0


def cmd_recommend_evaluate(ns: argparse.Namespace) -> int:
    from .cli import _resolve_data
    from .data.catalogue import load_catalogue
    from .search.recommend import create_recommender, evaluate, leave_last_out
    from .search.shopping_log import read_events

    events = read_events(ns.events)
    cat = load_catalogue(_resolve_data(ns.data))
    vectors = _item_vectors(ns, cat)
    train, test = leave_last_out(events)
    for kind in ("popularity", "content", "hybrid"):
        rec = create_recommender(kind, **({} if kind == "popularity" else {"item_vectors": vectors}))
        rec.fit(train, catalogue=list(cat.products))
        rep = evaluate(rec, train, test, k=ns.k, catalogue=list(cat.products))
        print(json.dumps({"recommender": kind, "hit_rate": rep.hit_rate, "ndcg": rep.ndcg,
                          "coverage": rep.coverage, "users": rep.n_users, "k": rep.k}))
    return 0


def add_recommend_commands(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("recommend", help="recommendations from a behaviour log (CSV user_id,product_id,event,timestamp)")
    rsub = r.add_subparsers(dest="recommend_command", required=True)
    g = rsub.add_parser("for", help="recommend for users, or products similar to a product")
    g.add_argument("--events", required=True, help="behaviour log CSV")
    g.add_argument("--data", help="catalogue (products and their texts; default: the grocery dataset)")
    g.add_argument("--model", help="bundle whose catalogue-photo embeddings join the text content vectors")
    g.add_argument("--kind", choices=("hybrid", "content", "popularity"), default="hybrid")
    g.add_argument("--user", nargs="+", help="user id(s)")
    g.add_argument("--similar", nargs="+", help="product id(s)")
    g.add_argument("--seed-product", action="append", help="for a user with no history: products they look at now")
    g.add_argument("--include-seen", action="store_true")
    g.add_argument("-k", type=int, default=10)
    g.set_defaults(func=cmd_recommend)
    gen = rsub.add_parser("generate", help="write a SYNTHETIC shopping log for a catalogue (documented generator)")
    gen.add_argument("--data", help="catalogue (default: the grocery dataset)")
    gen.add_argument("--users", type=int, default=2000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True)
    gen.set_defaults(func=cmd_recommend_generate)
    ev = rsub.add_parser("evaluate", help="leave-last-out HitRate@k / NDCG@k: popularity vs content vs hybrid")
    ev.add_argument("--events", required=True)
    ev.add_argument("--data")
    ev.add_argument("--model")
    ev.add_argument("-k", type=int, default=10)
    ev.set_defaults(func=cmd_recommend_evaluate)
