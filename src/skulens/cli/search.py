"""`skulens index | search | align | text-tune | enroll | unenroll | fuse`: finding products (thin handlers over the core)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ._common import (
    EXIT_FAILED,
    UsageError,
    add_data,
    add_engine,
    add_model,
    add_out,
    add_precision,
    add_quiet,
    add_top_k,
    check_engine,
    check_out_path,
    check_precision_flag,
    data_path,
    device_arg,
    engine_options,
    expand_inputs,
    model_path,
    non_negative_int,
    positive_int,
    say,
)

__all__ = ["add_commands"]

TEXT_MODES = ("hybrid", "aligned", "text", "lexical")  # skulens.search.engine.TEXT_MODES (no torch import here)
ROUTE_MASS, ROUTE_MAX_CLASSES = 0.9, 3  # skulens.search.engine's, likewise
TUNE_EPOCHS = 2  # skulens.search.text_tune.TuneConfig.epochs


def _filters(items: list[str] | None) -> dict[str, Any] | None:
    """--filter coarse_label=Milk --filter in_stock=true --filter shelf=[1,3] (any of)."""
    if not items:
        return None
    from ..search.index import parse_filter

    return parse_filter(items)


def _ray_embedder(ns: argparse.Namespace, bundle: str) -> Any:
    from ..deploy.batch_jobs import EmbedJob
    from ..deploy.ray_jobs import embed_on_ray

    job = EmbedJob(bundle, batch_size=ns.batch_size, device=ns.device, precision=ns.precision)
    return lambda paths: embed_on_ray(job, paths, **engine_options(ns))


def cmd_index_build(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    assert bundle is not None
    check_precision_flag(ns, backend="torch")  # --backend is the vector store's
    # the store the location names, as every other command opens it: `-o http://host:19530#shop` without
    # --backend milvus wrote a FAISS folder named "http:" and said it had built the index
    from ..search.index import detect_kind

    located = detect_kind(ns.out)
    if ns.backend == "faiss" and located == "milvus":
        raise UsageError(f"-o {ns.out}: a Milvus location (a server URI or a .db file); a FAISS index is a folder")
    ns.backend = ns.backend or located
    target = ns.out.partition("#")[0]  # a FAISS folder or a Milvus Lite file (not a server): one that cannot be
    if "://" not in target and not target.startswith("unix:"):  # written is told before the photos are embedded
        # (it was a traceback after them); a Milvus Lite location may be a file or a folder
        check_out_path(target, "-o", folder=ns.backend == "faiss" or Path(target).is_dir())
    on_ray = check_engine(ns)
    data = data_path(ns, model=bundle)
    from ..data.catalogue import load_catalogue
    from ..models.predictor import load_model
    from ..search.catalogue_index import build_catalogue_index, read_metadata_table

    meta = read_metadata_table(ns.metadata) if ns.metadata else None
    options = {k: v for k, v in (("ann", ns.ann), ("exact_threshold", ns.exact_threshold), ("nprobe", ns.nprobe),
                                 ("collection", ns.collection), ("index_type", ns.index_type)) if v is not None}
    other = {"faiss": ("collection", "index_type"), "milvus": ("ann", "exact_threshold", "nprobe")}[ns.backend]
    wrong = [f"--{k.replace('_', '-')}" for k in other if k in options]
    if wrong:
        raise UsageError(f"{', '.join(wrong)}: not a setting of the {ns.backend} backend")
    ann = ns.ann or "auto"  # FAISS reads the threshold only to choose a structure, nprobe only for IVF lists
    if ns.exact_threshold is not None and ann != "auto":
        raise UsageError(f"--exact-threshold: it chooses between exact search and IVF-SQ8 for --ann auto; --ann {ann} "
                         "is chosen already")
    if ns.nprobe is not None and not (ann == "auto" or ann.startswith("ivf")):
        raise UsageError(f"--nprobe: IVF lists visited per query (--ann ivf, ivfsq8, ivfpq, or auto); --ann {ann} "
                         "has no lists")
    catalogue = load_catalogue(data)
    res = build_catalogue_index(load_model(bundle, device=ns.device, precision=ns.precision), catalogue, ns.out, backend=ns.backend,
                                splits=ns.splits, catalogue_photos=ns.catalogue_photos, metadata=meta,
                                progress=not ns.quiet, overwrite=ns.overwrite, batch_size=ns.batch_size,
                                embed=_ray_embedder(ns, bundle) if on_ray else None, **options)
    where = ns.out if not ns.collection or "#" in ns.out else f"{ns.out}#{ns.collection}"
    say(f"index {where} ({ns.backend}): {res.entries} photos of {res.products} products"
        + (f"; other commands open it as {where}" if where != ns.out else ""))
    left = {name: len(samples) for name, samples in catalogue.splits.items() if name not in ns.splits and samples}
    if left:  # a folder catalogue's carved val (10 %) was left out unsaid
        carved = " (carved out of train)" if catalogue.val_was_generated and "val" in left else ""
        say("not indexed: " + ", ".join(f"{n} photos of {name}" for name, n in left.items()) + carved
            + f"; --splits {' '.join([*ns.splits, *left])} indexes them too")
    if res.failed:
        say(f"skipped {len(res.failed)} undecodable image(s), e.g. {res.failed[0][0]}: {res.failed[0][1]}")
    return 0


def cmd_index_info(ns: argparse.Namespace) -> int:
    from ..search.index import open_index

    index = open_index(ns.index)
    products = {r.product_id for r in index.records()}
    print(json.dumps({"index": ns.index, "products": len(products), **index.info()}, indent=2, default=str))
    return 0


def cmd_index_update(ns: argparse.Namespace) -> int:
    from ..search.index import open_index, parse_filter

    index = open_index(ns.index)
    # KEY= removes the key, as a blank cell of a --metadata table leaves it out (it stored ""); KEY="" stores ""
    blank = {item.partition("=")[0].strip() for item in ns.set if not item.partition("=")[2].strip()}
    values = {k: None if k in blank else v for k, v in (parse_filter(ns.set, "--set") if ns.set else {}).items()}
    index.update_metadata(ns.product, values)
    index.save()
    say(f"{ns.product}: metadata {json.dumps(values)}")  # as stored: false and null, not Python's False and None
    return 0


def cmd_index_remove(ns: argparse.Namespace) -> int:
    if not ns.product and not ns.id:
        raise UsageError("give --product PRODUCT_ID or --id ENTRY_ID (repeatable)")
    from ..search.index import open_index

    index = open_index(ns.index)
    unknown = sorted(set(ns.product or ()) - index.product_ids())
    if unknown:  # as index update: a typo is told, not "removed 0 entries"
        index.close()
        raise UsageError(f"no product {unknown[0]!r} in {ns.index}; nothing was removed")
    missing = sorted(i for i in set(ns.id or ()) if index.get(i) is None)
    if missing:
        index.close()
        raise UsageError(f"no entry {missing[0]!r} in {ns.index}; nothing was removed")
    n = index.remove(product_ids=ns.product or None, ids=ns.id or None)
    index.save()
    say(f"removed {n} entr{'y' if n == 1 else 'ies'}")
    return 0


def cmd_index_duplicates(ns: argparse.Namespace) -> int:
    from ..search.duplicates import near_duplicates
    from ..search.index import open_index

    groups = near_duplicates(open_index(ns.index), threshold=ns.threshold, k=ns.top_k, filter=_filters(ns.filter),
                             progress=not ns.quiet)
    for g in groups:
        print(json.dumps({"ids": list(g.ids), "product_ids": list(g.product_ids), "cross_product": g.cross_product,
                          "min_score": round(g.min_score, 6), "max_score": round(g.max_score, 6)}))
    cross = sum(g.cross_product for g in groups)
    say(f"{len(groups)} group(s) of near-duplicates at cosine >= {ns.threshold}; {cross} span several products "
        "(likely mislabels or duplicated listings)")
    return 0


def _engine(ns: argparse.Namespace, need_model: bool) -> Any:
    bundle = model_path(ns)
    if need_model and not bundle:
        raise UsageError("--model BUNDLE is needed for photo queries (the index does not record its model)")
    text = bool(getattr(ns, "text", None))
    if text and not bundle and not ns.align and ns.mode == "aligned":
        raise UsageError("--mode aligned needs the model whose text aligner it uses (-m/--model BUNDLE), or "
                         "--align FILE (the index does not record its model)")
    from ..models.text import DEFAULT_TEXT_MODEL, bundle_text_model
    from ..search.align import load_aligner
    from ..search.engine import RouteError, SearchEngine
    from ..search.index import open_index

    index = open_index(ns.index)
    if text and not bundle and not ns.align and ns.mode == "hybrid" and not getattr(ns, "quiet", False):
        say("skulens search: no --model: BM25 and the bundled MiniLM only (give -m BUNDLE for its fine-tuned text "
            "encoder and text aligner)")
    model = None
    if bundle and (need_model or text and ns.mode not in ("text", "lexical")):  # photos; the aligner's image side
        from ..models.predictor import load_model  # torch: not imported by a lexical or --product search

        model = load_model(bundle)
    model_bundle = bundle if bundle and not bundle.startswith("pretrained:") else None
    source = ns.align or model_bundle
    aligner = load_aligner(source, bundle=model_bundle) if source else None
    if ns.align and aligner is None:  # a typo must not quietly search without the image-space part
        index.close()
        raise UsageError(f"--align {ns.align}: no text alignment there (a text_align.safetensors file, or a bundle "
                         "folder holding one: `skulens align` writes it)")
    # the bundle's fine-tuned text encoder (`skulens text-tune`) even when the image model is not loaded
    try:
        return SearchEngine(model, index, aligner, text_model=bundle_text_model(bundle) or DEFAULT_TEXT_MODEL,
                            route=ns.route if ns.image else None)
    except ValueError as exc:  # --route the model cannot serve (RouteError), or an index of another model
        index.close()
        raise UsageError(f"--route: {exc}" if isinstance(exc, RouteError) else str(exc)) from None


def cmd_search(ns: argparse.Namespace) -> int:
    if ns.text and any(not t.strip() for t in ns.text):
        raise UsageError("--text: empty query; give some words to search by")
    if ns.route is not None and not ns.image:
        raise UsageError("--route routes photo queries (--image) to their predicted coarse classes")
    if ns.route is not None and not 0.0 < ns.route <= 1.0:
        raise UsageError(f"--route must be a probability in (0, 1], got {ns.route}")
    if not ns.text and (ns.mode is not None or ns.align):
        raise UsageError(f"{'--mode' if ns.mode is not None else '--align'} is a setting of text queries (--text)")
    ns.mode = ns.mode or "hybrid"
    # the aligner serves the hybrid and aligned modes only
    if ns.align and ns.mode in ("text", "lexical"):
        raise UsageError(f"--align: the image-space part of --mode hybrid and aligned; --mode {ns.mode} does not "
                         "use it")
    filt = _filters(ns.filter)
    engine = _engine(ns, need_model=bool(ns.image))
    if ns.image:
        from ..data.decode import ImageDecodeError

        queries = expand_inputs(ns.image)  # folders and globs, as predict takes them
        if not queries:
            raise UsageError(f"--image {' '.join(ns.image)}: no photos there")
        failed = 0
        for start in range(0, len(queries), 64):  # batches; a batch with a bad photo goes again one by one
            part = queries[start:start + 64]
            try:
                answers: list[Any] = engine.by_image(part, k=ns.top_k, filter=filt)
            except (ImageDecodeError, FileNotFoundError):
                answers = []
                for q in part:
                    try:
                        answers += engine.by_image([q], k=ns.top_k, filter=filt)
                    except (ImageDecodeError, FileNotFoundError) as exc:
                        answers.append(exc)
            for q, hits in zip(part, answers, strict=True):
                if isinstance(hits, Exception):  # its own error line, not the end of the batch
                    failed += 1
                    print(json.dumps({"query": q, "error": getattr(hits, "reason", None) or str(hits)}))
                else:
                    print(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}))
        return EXIT_FAILED if failed == len(queries) else 0
    if ns.text:
        try:
            results = engine.by_text(ns.text, k=ns.top_k, filter=filt, mode=ns.mode)
        except ValueError as exc:  # mode aligned without an aligner, an aligner of another text encoder
            raise UsageError(str(exc)) from None
        queries = ns.text
    else:
        results = [engine.more_like_this(p, k=ns.top_k, filter=filt) for p in ns.product]
        queries = ns.product
    for q, hits in zip(queries, results, strict=True):
        print(json.dumps({"query": q, "hits": [h.to_dict() for h in hits]}))
    return 0


def cmd_align(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    assert bundle is not None
    data = data_path(ns, model=bundle)
    if ns.out is None and bundle.startswith("pretrained:"):
        raise UsageError(f"--model {bundle} has no bundle to keep the alignment in: give -o FILE.safetensors")
    if ns.out is not None:
        _check_align_out(ns.out)
    from ..data.catalogue import load_catalogue
    from ..models.bundle import bundle_folder
    from ..models.predictor import load_model
    from ..search.align import align_catalogue

    # into the bundle's folder, also when --model names its card.json (that file was overwritten)
    target = ns.out or bundle_folder(bundle)
    aligner, products, photos = align_catalogue(load_model(bundle), load_catalogue(data), splits=ns.splits,
                                                steps=ns.steps, progress=not ns.quiet)
    if ns.out is not None and ns.out.endswith(("/", os.sep)):
        Path(ns.out).mkdir(parents=True, exist_ok=True)  # the aligner goes in as text_align.safetensors
    elif ns.out is not None and not Path(ns.out).is_dir():
        Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    out = aligner.save(target)
    say(f"text alignment for {products} products from {photos} photos: {out} "
        f"(final loss {aligner.info['final_loss']:.3f})")
    return 0


def _check_align_out(out: str) -> None:
    """Before any work: -o names a folder (the aligner goes in as text_align.safetensors) or a file that is not
    there yet or is an earlier aligner. Any file was replaced (a bundle's card.json or weights, a catalogue's
    manifest), and a missing folder failed as a traceback after the training."""
    path = Path(out)
    if path.is_dir():
        return
    if out.endswith(("/", os.sep)):  # a folder to make (`-o new/` wrote a file named "new")
        check_out_path(out, "-o", folder=True)
        return
    check_out_path(out, "-o")
    if path.exists():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "np") as f:
                aligner = set(f.keys()) - {"probe"} == {"weight", "bias"}  # an aligner's (older: no metadata)
        except (OSError, SafetensorError):  # not a safetensors file at all
            aligner = False
        if not aligner:
            raise UsageError(f"-o {out}: a file that is not a text alignment is there (a model's weights?); name "
                             "another file")


def cmd_text_tune(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    assert bundle is not None
    if bundle.startswith("pretrained:") or bundle.endswith(".onnx"):
        raise UsageError(f"--model {bundle}: text-tune stores the encoder in a bundle folder; give one")
    data = data_path(ns, model=bundle)
    if ns.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if ns.queries and not Path(ns.queries).is_file():
        raise UsageError(f"--queries {ns.queries}: no such file (a CSV with query,product_id columns)")
    from ..data.catalogue import load_catalogue
    from ..search.text_tune import TuneConfig, tune_text_encoder

    try:
        config = TuneConfig(epochs=ns.epochs, seed=ns.seed)
    except ValueError as exc:  # a seed of 2**32 or more: a traceback
        raise UsageError(str(exc)) from None
    res = tune_text_encoder(bundle, load_catalogue(data), queries=ns.queries, config=config, progress=not ns.quiet)
    log = f", {res.query_pairs} from {ns.queries}" if ns.queries else ""
    say(f"text encoder fine-tuned on {res.pairs} pairs of {res.products} products{log}: {res.epochs} epoch(s), "
        f"{res.steps} steps in {res.seconds:.0f} s, mean loss {res.mean_loss:.3f} -> {res.folder} "
        "(search uses it from now on; the image model is unchanged)")
    from ..search.align import heads_on_other_text

    for head in heads_on_other_text(bundle):
        what = "text aligner" if head == "align" else "fusion head"
        say(f"the bundle's {what} was fitted on the earlier text encoder: run `skulens {head} --model "
            f"{res.folder.parent}` again to use this one")
    return 0


def cmd_enroll(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    data = data_path(ns, model=bundle) if ns.data else None  # a typo is refused, not a bank-less enrolment
    photos = expand_inputs(ns.images)
    if not photos:
        raise UsageError(f"--images {' '.join(ns.images)}: no photos there")
    from ..search.enroll import enroll

    index = None
    if ns.index:
        from ..search.index import open_index

        index = open_index(ns.index)  # checked against the model by enroll itself
    res = enroll(bundle, ns.product, photos, text=ns.text or "", title=ns.title or "", coarse=ns.coarse,
                 data=data, index=index, progress=not ns.quiet)
    print(json.dumps({"label": res.label, "coarse_label": res.coarse_label, "coarse_inferred": res.coarse_inferred,
                      "photos": res.images, "skipped": [list(s) for s in res.skipped], "reference": res.reference,
                      "self_check": res.self_check, "index_entries": res.index_entries}))
    if res.coarse_inferred:
        say(f"coarse class inferred from the photos: {res.coarse_label} (pass --coarse to set it)")
    return 0


def cmd_unenroll(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    from ..search.enroll import unenroll

    index = None
    if ns.index:
        from ..search.index import open_index

        index = open_index(ns.index)
    try:
        res = unenroll(bundle, ns.product, index=index, all_entries=True)  # as DELETE /v1/products/ID does
    finally:
        if index is not None and hasattr(index, "close"):
            index.close()
    print(json.dumps({"label": res.label, "coarse_removed": res.coarse_removed, "photos_removed": res.photos_removed,
                      "index_entries": res.index_entries}))
    return 0


def cmd_fuse(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    data = data_path(ns, model=bundle)
    check_out_path(ns.out, "-o", folder=True)
    from ..evaluate.fusion import fuse_and_evaluate

    print(json.dumps(fuse_and_evaluate(bundle, data, out=ns.out, progress=not ns.quiet), indent=2))
    return 0


def _filter_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="metadata filter, repeatable: coarse_label=Milk, in_stock=true, shelf=[1,3] (any of)")


def _add_index(sub: Any) -> None:
    ix = sub.add_parser("index", help="build and maintain a product index (FAISS or Milvus)")
    isub = ix.add_subparsers(dest="index_command", required=True, metavar="{build,info,update,remove,duplicates}")
    b = isub.add_parser("build", help="embed a catalogue's photos into a new index")
    add_model(b, "bundle (or pretrained:efficientnet_lite2) that embeds the photos", positional_legacy=False)
    add_data(b, "catalogue (default: the model's recorded dataset, else the grocery dataset)",
             legacy=("--catalogue",))
    add_out(b, "index path: a folder (faiss) or a .db file / URI (milvus)", required=True)
    b.add_argument("--backend", choices=("faiss", "milvus"),
                   help="vector store (default: milvus for a server URI or a .db file, else faiss)")
    b.add_argument("--splits", nargs="+", default=["train"],
                   help="catalogue splits whose photos are indexed (default: train)")
    b.add_argument("--catalogue-photos", action=argparse.BooleanOptionalAction, default=True,
                   help="also index each product's catalogue photo (default: on)")
    b.add_argument("--metadata", help="CSV: product_id + metadata columns (in_stock, price, ...)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    b.add_argument("--ann", choices=("auto", "flat", "hnsw", "ivf", "ivfsq8", "ivfpq"),
                   help="faiss: ANN structure (auto: exact below --exact-threshold entries, IVF-SQ8 above; any "
                        "structure is exact below 1024 entries, where it is faster)")
    b.add_argument("--exact-threshold", type=int, help="faiss: exact search below this many entries (20000)")
    b.add_argument("--nprobe", type=positive_int, help="faiss IVF: lists visited per query")
    b.add_argument("--collection", help="milvus: collection name (default skulens); other commands reach it as "
                                        "LOCATION#NAME (e.g. http://localhost:19530#shoes), which -o takes too")
    b.add_argument("--index-type", help="milvus: IVF_FLAT (Lite default), HNSW (server default), FLAT")
    b.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    b.add_argument("--device", type=device_arg, default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto); --engine ray: cuda gives each actor a GPU")
    add_precision(b)
    add_engine(b, "the embeddings are computed on Ray and the index is written here, by this process (the "
                  "index backends are not distributed writers)")
    add_quiet(b)
    b.set_defaults(func=cmd_index_build)
    inf = isub.add_parser("info", help="what an index holds")
    inf.add_argument("index", help="index folder (faiss) or .db file / URI (milvus)")
    inf.set_defaults(func=cmd_index_info)
    u = isub.add_parser("update", help="change a product's metadata (no re-embedding)")
    u.add_argument("index", help="index folder (faiss) or .db file / URI (milvus)")
    u.add_argument("--product", required=True, help="product id")
    u.add_argument("--set", action="append", required=True, metavar="KEY=VALUE",
                   help="metadata value (repeatable); KEY= (nothing after =) removes the key")
    u.set_defaults(func=cmd_index_update)
    r = isub.add_parser("remove", help="remove products or entries")
    r.add_argument("index", help="index folder (faiss) or .db file / URI (milvus)")
    r.add_argument("--product", action="append", help="product id (repeatable)")
    r.add_argument("--id", action="append", help="entry id (repeatable)")
    r.set_defaults(func=cmd_index_remove)
    dd = isub.add_parser("duplicates", help="near-duplicate photos across the index (ANN, no N x N matrix)")
    dd.add_argument("index", help="index folder (faiss) or .db file / URI (milvus)")
    dd.add_argument("--threshold", type=float, default=0.95, help="cosine similarity (default: 0.95)")
    add_top_k(dd, 10, "neighbours looked at per photo")
    _filter_flag(dd)
    add_quiet(dd)
    dd.set_defaults(func=cmd_index_duplicates)


def add_commands(sub: Any) -> None:
    _add_index(sub)

    s = sub.add_parser("search", help="find products by photo, by words, or like an indexed product")
    s.add_argument("--index", required=True, help="index folder (faiss) or .db file / URI (milvus)")
    add_model(s, "bundle that built the index (needed for photo queries)", required=False, positional_legacy=False)
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", action="extend", help="query photo(s); repeatable")
    q.add_argument("--text", nargs="+", action="extend", help="query text(s), e.g. 'oat milk'; repeatable")
    q.add_argument("--product", nargs="+", action="extend", help="more like this indexed product id(s); repeatable")
    add_top_k(s, 10)
    _filter_flag(s)
    s.add_argument("--mode", choices=TEXT_MODES, default=None,
                   help="text search: hybrid (lexical + dense + aligned, fused; the default), text (dense only), "
                        "lexical (BM25 only), aligned (through the image space only)")
    s.add_argument("--align", help="text alignment file (default: the model bundle's)")
    s.add_argument("--route", type=float, nargs="?", const=ROUTE_MASS, metavar="MASS",
                   help="photo queries visit only their predicted coarse classes, the likeliest until they hold MASS "
                        f"of the probability (default {ROUTE_MASS}, at most {ROUTE_MAX_CLASSES} classes): fast on a "
                        "Milvus collection partitioned by coarse class (on FAISS, slower); entries outside the model's "
                        "coarse classes are not found")
    add_quiet(s, "no progress bars or library INFO lines (loading the text encoder)")
    s.set_defaults(func=cmd_search)

    a = sub.add_parser("align", help="learn the text -> image alignment that text search uses")
    add_model(a, "bundle whose embedding space the texts are aligned to", positional_legacy=False)
    add_data(a, "catalogue with product titles/descriptions (default: the model's recorded dataset)")
    a.add_argument("--splits", nargs="+", default=["train"],
                   help="splits whose photos pair with the texts (default: train)")
    a.add_argument("--steps", type=positive_int, default=400, help="optimisation steps (default: 400)")
    add_out(a, "where to write it (default: inside the model bundle)")
    add_quiet(a)
    a.set_defaults(func=cmd_align)

    tt = sub.add_parser("text-tune", help="fine-tune the text encoder of search on the catalogue's own words")
    add_model(tt, "bundle to store the fine-tuned encoder in (BUNDLE/text_encoder; the image model is untouched)",
              positional_legacy=False)
    add_data(tt, "catalogue with product titles/descriptions (default: the model's recorded dataset)")
    tt.add_argument("--queries", metavar="LOG.csv",
                    help="optional query log: CSV with query,product_id columns (what shoppers typed and chose)")
    tt.add_argument("--epochs", type=positive_int, default=TUNE_EPOCHS, help=f"passes over the pairs (default: {TUNE_EPOCHS})")
    tt.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    add_quiet(tt)
    tt.set_defaults(func=cmd_text_tune)

    en = sub.add_parser("enroll", help="add a product to a trained model from a few photos (no retraining)")
    add_model(en, "the bundle to add the product to (changed in place)")
    en.add_argument("--product", required=True, help="the new product's label")
    en.add_argument("--images", nargs="+", action="extend", required=True, help="its photos (files, folders or globs)")
    en.add_argument("--text", help="description (also used to recognise it when the bundle has a text aligner)")
    en.add_argument("--title", help="display name (default: the label)")
    en.add_argument("--coarse", help="coarse class (default: inferred from the photos)")
    en.add_argument("--index", help="also add the photos to this index")
    add_data(en, "the training catalogue, for reference photos (default: the card's)")
    add_quiet(en)
    en.set_defaults(func=cmd_enroll)

    un = sub.add_parser("unenroll", help="undo `skulens enroll`: take an enrolled product out of the model (and an index)")
    add_model(un, "the bundle the product was enrolled into (changed in place)")
    un.add_argument("--product", required=True, help="the enrolled product's label")
    un.add_argument("--index", help="also remove the product's entries from this index (every one: those "
                                    "added after the enrolment too)")
    un.set_defaults(func=cmd_unenroll)

    fu = sub.add_parser("fuse", help="train and compare an image + text fusion head (listings with their own text)")
    add_model(fu, "the bundle whose embeddings the fusion head reads")
    add_data(fu, "catalogue whose samples carry text (manifest 'text' or 'title' column)")
    add_out(fu, "report folder (default: BUNDLE/fusion-report)")
    add_quiet(fu)
    fu.set_defaults(func=cmd_fuse)
