"""Shopper-language text search on the Grocery Store catalogue: Recall@1, Recall@5 and MRR per search mode.

    python benchmarks/search_queries_grocery.py [--bundle runs/bench9/bundle] [--data PATH]
        [--queries benchmarks/data/shopper_queries.csv] [--aligner FILE] [--fit-aligner]
        [--text-tune OUT | --tuned BUNDLE] [--text-model DIR ...] [--modes NAME ...] [--misses N] [--no-write]

Queries: benchmarks/data/shopper_queries.csv (query, accepted products, kind), written by hand from general
knowledge and the product files, never from search results. A query is a hit at k when any accepted product
is among the first k distinct products; MRR uses the first accepted product's rank (0 when it is not ranked).

Modes (each a function: list of queries -> one ranked product list per query; add one to MODES to compare a
fine-tuned encoder, or pass --text-model DIR for a local sentence-transformers folder):

- lexical: TF-IDF (scikit-learn, words and word pairs, accents folded) over each product's title, label,
  coarse class, description, Information file and attribute words; products sharing no word are not ranked.
- minilm: the bundled frozen MiniLM; a product scores its best cosine over `product_sentences`.
- engine-lexical / engine-text / engine-hybrid / aligned: skulens' own `SearchEngine.by_text` in modes
  "lexical" (BM25 over the index records' words), "text" (dense: the text encoder over each product's
  texts), "hybrid" (the default: lexical + dense + aligned when there is an aligner, fused by reciprocal
  rank) and "aligned", over an index of the catalogue photos (records as `skulens index build` writes
  them). aligned needs the bundle's text aligner (text_align.safetensors); without one it is skipped and
  hybrid fuses lexical + dense. --fit-aligner fits one in memory, as `skulens align` would.
- rrf(lexical+minilm): reciprocal-rank fusion (the engine's `rank_fusion`) of the lexical and minilm lists.
- fine-tuned: with --text-tune OUT the bundle is copied to OUT and its text encoder fine-tuned there as
  `skulens text-tune` does (timed; the image weights are hashed before and after), or --tuned BUNDLE names
  one tuned before; then "minilm fine-tuned" (the sentence mode with that encoder) and the engine's text and
  hybrid modes with it are measured too. The query set is never trained on.

Appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from _results import append_section

from skulens.search.lexical import tokens as lexical_tokens

QUERIES = HERE / "data" / "shopper_queries.csv"
KINDS = ("synonym", "description", "use", "brand", "attribute", "category", "name")

Ranker = Callable[[list[str]], list[list[str]]]


@dataclass(frozen=True)
class Query:
    text: str
    accepted: frozenset[str]
    kind: str


def load_queries(path: str | Path, products: Sequence[str] | None = None) -> list[Query]:
    """The query file; with `products`, every accepted label must be one of them."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["query", "accepted", "kind"]:
            raise SystemExit(f"{path}: header must be query,accepted,kind (got {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            accepted = frozenset(a.strip() for a in row["accepted"].split(";") if a.strip())
            if not row["query"].strip() or not accepted:
                raise SystemExit(f"{path}:{line}: empty query or accepted list")
            unknown = accepted - set(products) if products is not None else set()
            if unknown:
                raise SystemExit(f"{path}:{line}: unknown product(s) {sorted(unknown)}")
            out.append(Query(row["query"].strip(), accepted, row["kind"].strip()))
    return out


def first_rank(ranked: Sequence[str], accepted: frozenset[str]) -> int | None:
    """1-based rank of the first accepted product, None when none is ranked."""
    return next((i + 1 for i, p in enumerate(ranked) if p in accepted), None)


def scores(ranks: Sequence[int | None]) -> tuple[float, float, float]:
    """Recall@1, Recall@5, MRR."""
    r = [x or 0 for x in ranks]
    return (float(np.mean([0 < x <= 1 for x in r])), float(np.mean([0 < x <= 5 for x in r])),
            float(np.mean([1 / x if x else 0.0 for x in r])))


def ranked_by(scores_matrix: np.ndarray, products: Sequence[str], *, drop_zero: bool = False) -> list[list[str]]:
    out = []
    for row in scores_matrix:
        order = np.argsort(-row, kind="stable")
        out.append([products[j] for j in order if not drop_zero or row[j] > 0])
    return out


# --- the catalogue's own words --------------------------------------------------------------------------

def attribute_words(attributes: Sequence[str]) -> str:
    """("colour=green", "lactose_free", "organic") -> "green lactose free organic"."""
    return " ".join((a.split("=", 1)[1] if "=" in a else a).replace("_", " ") for a in attributes)


def product_document(label: str, cat) -> str:
    p = cat.products[label]
    coarse = cat.hierarchy.get(label, "") or ""
    return " ".join(x for x in (p.title, label.replace("-", " "), coarse.replace("-", " "), p.description, p.info,
                                attribute_words(p.attributes)) if x)


# The same words and word pairs as the engine's BM25 (skulens.search.lexical).
_tokens = lexical_tokens


# --- modes -----------------------------------------------------------------------------------------------

def lexical_mode(cat, products: Sequence[str]) -> Ranker:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=_tokens, sublinear_tf=True)
    docs = vec.fit_transform([product_document(p, cat) for p in products])

    def run(queries: list[str]) -> list[list[str]]:
        return ranked_by((vec.transform(queries) @ docs.T).toarray(), products, drop_zero=True)

    return run


def sentence_mode(cat, products: Sequence[str], text_model: str = "minilm") -> Ranker:
    """A product scores its best cosine over its product_sentences (title, title + description, ...)."""
    from skulens.models.text import load_text_encoder
    from skulens.search.align import product_sentences

    enc = load_text_encoder(text_model)
    texts = [product_sentences(cat.products[p].title, cat.products[p].description, cat.products[p].info)
             for p in products]
    owner = np.repeat(np.arange(len(products)), [len(t) for t in texts])
    vecs = enc.encode([t for ts in texts for t in ts])

    def run(queries: list[str]) -> list[list[str]]:
        s = enc.encode(queries) @ vecs.T
        best = np.full((len(queries), len(products)), -np.inf, dtype=np.float32)
        np.maximum.at(best.T, owner, s.T)
        return ranked_by(best, products)

    return run


def rrf_mode(*rankers: Ranker) -> Ranker:
    from skulens.search.engine import rank_fusion
    from skulens.search.index import IndexRecord, SearchHit

    def hits(ranked: list[str]) -> list[SearchHit]:
        return [SearchHit(p, 0.0, IndexRecord(id=p, product_id=p, label=p)) for p in ranked]

    def run(queries: list[str]) -> list[list[str]]:
        lists = [r(queries) for r in rankers]
        return [[h.product_id for h in rank_fusion([hits(lst[i]) for lst in lists], 10**6)]
                for i in range(len(queries))]

    return run


def engine_modes(cat, products: Sequence[str], bundle: str, aligner, tmp: str, splits: Sequence[str],
                 tuned: str | None = None, tuned_aligner=None) -> dict[str, Ranker]:
    """skulens' SearchEngine over an index of the catalogue's photos (real image vectors when an aligner
    needs them; the "text" mode reads only the records' titles and texts). The fine-tuned rows use
    `tuned_aligner` (fitted on the fine-tuned encoder) when given, else `aligner`."""
    from skulens.search.catalogue_index import build_catalogue_index, catalogue_records
    from skulens.search.engine import SearchEngine
    from skulens.search.index import create_index

    if aligner is not None:
        from skulens.models.predictor import load_model

        index = build_catalogue_index(load_model(bundle), cat, str(Path(tmp) / "ix"), splits=splits).index
    else:
        records, _ = catalogue_records(cat, splits=(), catalogue_photos=True)
        index = create_index("faiss", str(Path(tmp) / "ix"), len(records))
        index.add(records, np.eye(len(records), dtype=np.float32))  # placeholders: text mode never reads them
    engine = SearchEngine(None, index, aligner, text_model="minilm")
    n = len(products)

    def mode(name: str, eng=engine) -> Ranker:
        def run(queries: list[str]) -> list[list[str]]:
            return [[h.product_id for h in row] for row in eng.by_text(queries, k=n, mode=name)]
        return run

    out = {"engine-lexical (BM25)": mode("lexical"), "engine-text (frozen MiniLM)": mode("text"),
           "engine-hybrid (default, frozen MiniLM)": mode("hybrid")}
    if aligner is not None:
        out["aligned"] = mode("aligned")
    if tuned is not None:
        from skulens.models.text import bundle_text_model

        folder = bundle_text_model(tuned)
        if folder is None:
            raise SystemExit(f"{tuned}: no fine-tuned text encoder (run `skulens text-tune --model {tuned}`)")
        tuned_engine = SearchEngine(None, index, tuned_aligner or aligner, text_model=folder)
        out["engine-text (fine-tuned)"] = mode("text", tuned_engine)
        out["engine-hybrid (default, fine-tuned)"] = mode("hybrid", tuned_engine)
        if tuned_aligner is not None:
            out["aligned (fine-tuned encoder)"] = mode("aligned", tuned_engine)
    return out


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def text_tune_copy(bundle: str, out: str, cat) -> tuple[str, str]:
    """Copy the bundle to `out` and fine-tune its text encoder there as `skulens text-tune` does; returns
    the tuned bundle and a note (wall time, load average, image weights hashed before and after)."""
    import os
    import shutil

    from skulens.search.text_tune import TuneConfig, tune_text_encoder

    src, dst = Path(bundle), Path(out)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    files = [f for f in ("model.safetensors", "card.json") if (dst / f).is_file()]
    before = {f: sha256(dst / f) for f in files}
    load0 = os.getloadavg()[0]
    config = TuneConfig()
    res = tune_text_encoder(dst, cat, config=config, progress=True)
    load1 = os.getloadavg()[0]
    after = {f: sha256(dst / f) for f in files}
    same = before == after and before == {f: sha256(src / f) for f in files}
    if not same:
        raise SystemExit(f"text-tune changed the image bundle files: {before} -> {after}")
    note = (f"Text encoder fine-tuned (`skulens text-tune --model {dst}`: {res.pairs} catalogue pairs of "
            f"{res.products} products, {res.epochs} epochs, {res.steps} steps, batch {config.batch_size}, lr "
            f"{config.lr}, seed {config.seed}) in **{res.seconds:.0f} s** on this CPU (1-minute load average "
            f"{load0:.2f} at the start, {load1:.2f} at the end); mean loss {res.mean_loss:.3f}. Image model "
            f"unchanged by construction: model.safetensors sha256 {before.get('model.safetensors', '?')[:16]}... and "
            "card.json are byte-identical before and after, and to the source bundle, so image top-1 is the "
            "source bundle's.")
    print(note, flush=True)
    return str(dst), note


# --- the benchmark -----------------------------------------------------------------------------------------

def evaluate(modes: dict[str, Ranker], queries: list[Query]) -> dict[str, dict]:
    out = {}
    texts = [q.text for q in queries]
    for name, run in modes.items():
        run(texts[:1])  # warm-up: model loading and product encoding are not query time
        t0 = time.perf_counter()
        ranked = run(texts)
        took = time.perf_counter() - t0
        ranks = [first_rank(r, q.accepted) for r, q in zip(ranked, queries, strict=True)]
        per_kind = {k: scores([r for r, q in zip(ranks, queries, strict=True) if q.kind == k])
                    for k in KINDS if any(q.kind == k for q in queries)}
        out[name] = {"all": scores(ranks), "kinds": per_kind, "ranks": ranks, "ranked": ranked, "seconds": took}
        r1, r5, mrr = out[name]["all"]
        print(f"{name}: R@1 {r1:.3f}  R@5 {r5:.3f}  MRR {mrr:.3f}  ({took:.1f} s)", flush=True)
    return out


def tables(res: dict[str, dict], queries: list[Query]) -> str:
    kinds = [k for k in KINDS if any(q.kind == k for q in queries)]
    counts = {k: sum(q.kind == k for q in queries) for k in kinds}
    head = ("| mode | Recall@1 | Recall@5 | MRR | s for all queries (warm) |\n|---|---|---|---|---|\n"
            + "\n".join(f"| {m} | {100 * r['all'][0]:.1f} | {100 * r['all'][1]:.1f} | {r['all'][2]:.3f} "
                        f"| {r['seconds']:.1f} |" for m, r in res.items()))
    out = [head]
    for i, metric in enumerate(("Recall@1", "Recall@5", "MRR")):
        cols = " | ".join(f"{k} ({counts[k]})" for k in kinds)
        rows = []
        for m, r in res.items():
            cells = " | ".join((f"{r['kinds'][k][i]:.3f}" if i == 2 else f"{100 * r['kinds'][k][i]:.1f}")
                               for k in kinds)
            rows.append(f"| {m} | {cells} |")
        out.append(f"{metric} per kind (queries):\n\n| mode | {cols} |\n|---|{'---|' * len(kinds)}\n"
                   + "\n".join(rows))
    return "\n\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench9/bundle", help="bundle whose text aligner is measured")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "grocery-store"))
    ap.add_argument("--queries", default=str(QUERIES))
    ap.add_argument("--aligner", help="text alignment file (default: the bundle's text_align.safetensors)")
    ap.add_argument("--fit-aligner", action="store_true",
                    help="no aligner in the bundle: fit one in memory as `skulens align` does, on the index splits")
    ap.add_argument("--index-splits", nargs="*", default=[],
                    help="photo splits indexed beside the catalogue photos for aligned/hybrid (default: none)")
    ap.add_argument("--text-tune", metavar="OUT",
                    help="copy --bundle to OUT, fine-tune its text encoder there (timed), and measure it too")
    ap.add_argument("--tuned", metavar="BUNDLE", help="a bundle whose text encoder was fine-tuned before")
    ap.add_argument("--text-model", action="append", default=[],
                    help="extra mode: a local sentence-transformers folder (e.g. a fine-tuned MiniLM)")
    ap.add_argument("--modes", nargs="+", help="only these modes (names as printed)")
    ap.add_argument("--misses", type=int, default=0, help="print up to N misses at 5 per mode")
    ap.add_argument("--no-write", action="store_true")
    ns = ap.parse_args()

    from skulens.data.catalogue import load_catalogue
    from skulens.search.align import load_aligner

    t0 = time.perf_counter()
    cat = load_catalogue(ns.data)
    products = list(cat.classes)
    queries = load_queries(ns.queries, products)
    aligner_note = ""
    aligner = load_aligner(ns.aligner or ns.bundle) if (ns.aligner or Path(ns.bundle).is_dir()) else None
    if aligner is not None:
        aligner_note = f"Aligner: `{ns.aligner or ns.bundle}`."
    elif ns.fit_aligner:
        from skulens.models.predictor import load_model
        from skulens.search.align import align_catalogue

        t1 = time.perf_counter()
        aligner, n_products, n_photos = align_catalogue(load_model(ns.bundle), cat, splits=ns.index_splits,
                                                        progress=False)
        aligner_note = (f"Aligner: none in `{ns.bundle}`; fitted here as `skulens align` does ({n_products} products, "
                        f"{n_photos} photos: catalogue photos + splits {ns.index_splits or 'none'}, "
                        f"{time.perf_counter() - t1:.0f} s).")
    else:
        aligner_note = (f"Aligner: `{ns.bundle}` has no text_align.safetensors, so the aligned mode is skipped and "
                        "the engine's default hybrid mode fuses its lexical (BM25) and dense rankings only.")

    tuned, tune_note = ns.tuned, ""
    if ns.text_tune:
        tuned, tune_note = text_tune_copy(ns.bundle, ns.text_tune, cat)
    elif tuned:
        from skulens.models.text import bundle_text_model, text_tune_info

        info = text_tune_info(bundle_text_model(tuned) or tuned)
        tune_note = (f"Fine-tuned text encoder: `{tuned}/text_encoder` ({info.get('pairs')} pairs, "
                     f"{info.get('config', {}).get('epochs')} epochs, {info.get('seconds')} s).")

    with tempfile.TemporaryDirectory() as tmp:
        lexical = lexical_mode(cat, products)
        minilm = sentence_mode(cat, products)
        modes: dict[str, Ranker] = {"lexical (TF-IDF)": lexical, "minilm (frozen, product sentences)": minilm}
        if tuned:
            from skulens.models.text import bundle_text_model

            modes["minilm fine-tuned (product sentences)"] = sentence_mode(cat, products, bundle_text_model(tuned))
        tuned_aligner = None
        if tuned is not None and ns.fit_aligner and aligner is not None and aligner.text_model == "minilm":
            from skulens.models.predictor import load_model
            from skulens.search.align import align_catalogue

            t1 = time.perf_counter()
            tuned_aligner = align_catalogue(load_model(tuned), cat, splits=ns.index_splits, progress=False)[0]
            aligner_note += (f" A second aligner fitted the same way on the fine-tuned encoder ("
                             f"{time.perf_counter() - t1:.0f} s) serves the fine-tuned rows.")
        modes.update(engine_modes(cat, products, ns.bundle, aligner, tmp, ns.index_splits, tuned, tuned_aligner))
        modes["rrf(lexical+minilm)"] = rrf_mode(lexical, minilm)
        for folder in ns.text_model:
            modes[f"text model {Path(folder).name}"] = sentence_mode(cat, products, folder)
        if ns.modes:
            unknown = set(ns.modes) - set(modes)
            if unknown:
                raise SystemExit(f"unknown mode(s) {sorted(unknown)}: {', '.join(modes)}")
            modes = {m: modes[m] for m in ns.modes}
        res = evaluate(modes, queries)

    for name, r in res.items():
        misses = [(q, ranked[:5]) for q, rank, ranked in zip(queries, r["ranks"], r["ranked"], strict=True)
                  if not rank or rank > 5]
        for q, top in misses[:ns.misses]:
            print(f"  miss [{name}] {q.kind}: {q.text!r} -> {', '.join(top) or '(nothing)'}")
    kinds = ", ".join(f"{k} {sum(q.kind == k for q in queries)}" for k in KINDS)
    covered = len(set().union(*(q.accepted for q in queries)))
    body = (f"{len(queries)} shopper queries (`{Path(ns.queries).name}`; {kinds}) over the {len(products)} grocery "
            f"products ({covered} covered); hit = any accepted product (1 to 10 per query) in the top k distinct "
            f"products. {aligner_note} {tune_note}\n\n{tables(res, queries)}\n\n"
            f"Wall time: {time.perf_counter() - t0:.0f} s.")
    print(body)
    if not ns.no_write:
        append_section("Shopper-language text search on grocery (hand-written queries)",
                       "python benchmarks/search_queries_grocery.py " + " ".join(sys.argv[1:]), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
