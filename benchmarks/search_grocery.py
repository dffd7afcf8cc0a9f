"""Search, text alignment, zero-shot recognition, enrolment and fusion on the Grocery Store data (val).

    python benchmarks/search_grocery.py [--bundle runs/bench5/bundle] [--data PATH]

Uses the fine-tuned bundle for image search, text search and fusion, and the plain pretrained
EfficientNet-Lite2 for the zero-shot and enrolment split (a fine-tuned model has already seen the
"new" products). Embeddings are cached by benchmarks/_grocery_embeddings.py. Appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from _grocery_embeddings import GroceryEmbeddings, load_embeddings
from _results import append_section

SEED = 0


def recall(ranked: list[list[str]], truth: list[str], k: int) -> float:
    return float(np.mean([t in r[:k] for r, t in zip(ranked, truth, strict=True)]))


def index_search(e: GroceryEmbeddings, gallery: str, queries: np.ndarray, k: int = 5) -> tuple[list[list[str]], float]:
    """Search through a real skulens FAISS index; returns ranked product ids and the build time."""
    from skulens.search.index import IndexRecord, create_index

    if gallery == "train":
        vecs = e.train_x
        records = [IndexRecord(id=f"t{i}", product_id=e.classes[y], label=e.classes[y]) for i, y in enumerate(e.train_y)]
    else:
        vecs = e.iconic_x
        records = [IndexRecord(id=f"c{i}", product_id=c, label=c) for i, c in enumerate(e.classes)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = create_index("faiss", str(Path(tmp) / "ix"), vecs.shape[1])
        index.add(records, vecs)
        build = time.perf_counter() - t0
        hits = index.search(queries, k=k)
    return [[h.product_id for h in row] for row in hits], build


def image_search(fine: GroceryEmbeddings, pre: GroceryEmbeddings) -> tuple[str, dict]:
    truth = [fine.classes[y] for y in fine.val_y]
    rows, out = [], {}
    for name, e in (("fine-tuned bundle", fine), ("pretrained Lite2", pre)):
        for gallery in ("train", "catalogue"):
            ranked, _ = index_search(e, gallery, e.val_x)
            r1, r5 = recall(ranked, truth, 1), recall(ranked, truth, 5)
            out[(name, gallery)] = (r1, r5)
            g = "2640 train photos" if gallery == "train" else "81 catalogue photos"
            rows.append(f"| {name} | {g} | {100 * r1:.1f} | {100 * r5:.1f} |")
    table = ("| embedding | gallery | Recall@1 | Recall@5 |\n|---|---|---|---|\n" + "\n".join(rows))
    return table, out


def product_texts(cat, classes):
    from skulens.search.align import product_sentences

    return [product_sentences(cat.products[c].title, cat.products[c].description, cat.products[c].info)
            for c in classes]


def text_search(cat, e: GroceryEmbeddings) -> tuple[str, dict]:
    """Queries: the 81 product names. Aligner trained on train photos + catalogue photos with name + description."""
    from skulens.models.text import load_text_encoder
    from skulens.search.align import train_aligner
    from skulens.search.engine import rank_fusion
    from skulens.search.index import IndexRecord, SearchHit

    X = np.concatenate([e.train_x, e.iconic_x])
    y = np.concatenate([e.train_y, np.arange(len(e.classes))])
    t0 = time.perf_counter()
    aligner = train_aligner(X, y, product_texts(cat, e.classes))
    fit_s = time.perf_counter() - t0
    names = [cat.products[c].title for c in e.classes]
    q = aligner.encode(names)
    # aligned: max over each product's photos (what the index does with group_by_product)
    s = q @ X.T
    best = np.stack([s[:, y == p].max(1) for p in range(len(e.classes))], 1)
    aligned = [[e.classes[j] for j in np.argsort(-row)] for row in best]
    enc = load_text_encoder()
    docs = enc.encode([f"{cat.products[c].title}. {cat.products[c].description}" for c in e.classes])
    docs_only = enc.encode([cat.products[c].description for c in e.classes])
    qt = enc.encode(names)
    lexical = [[e.classes[j] for j in np.argsort(-row)] for row in qt @ docs.T]
    desc_only = [[e.classes[j] for j in np.argsort(-row)] for row in qt @ docs_only.T]

    def hits(r):
        return [SearchHit(p, 0.0, IndexRecord(id=p, product_id=p, label=p)) for p in r[:20]]

    hybrid = [[h.product_id for h in rank_fusion([hits(a), hits(t)], 10)] for a, t in zip(aligned, lexical, strict=True)]
    truth = list(e.classes)
    rows, out = [], {}
    for name, ranked in (("aligned (text -> image space only)", aligned),
                         ("MiniLM vs product title + description", lexical),
                         ("MiniLM vs description only (title hidden)", desc_only),
                         ("hybrid (default: rank fusion of aligned + title/description)", hybrid)):
        r1, r5 = recall(ranked, truth, 1), recall(ranked, truth, 5)
        out[name] = (r1, r5)
        rows.append(f"| {name} | {100 * r1:.1f} | {100 * r5:.1f} |")
    table = ("| text search (query = product name, 81 products) | Recall@1 | Recall@5 |\n|---|---|---|\n"
             + "\n".join(rows) + f"\n\nAlignment fitted in {fit_s:.1f} s on {len(X)} photos.")
    return table, out


def zero_shot(cat, e: GroceryEmbeddings) -> tuple[str, dict]:
    """Train alignment on 60 products; recognise val photos of the other 21 among those 21."""
    import torch

    from skulens.search.align import train_aligner
    from skulens.search.enroll import imprint_class

    rng = np.random.default_rng(SEED)
    perm = rng.permutation(len(e.classes))
    seen, new = np.sort(perm[:60]), np.sort(perm[60:])
    texts = product_texts(cat, e.classes)

    def fit_on(products: np.ndarray):
        m = np.isin(e.train_y, products)
        remap = {c: i for i, c in enumerate(products)}
        X = np.concatenate([e.train_x[m], e.iconic_x[products]])
        y = np.array([remap[c] for c in np.concatenate([e.train_y[m], products])])
        return train_aligner(X, y, [texts[c] for c in products])

    def scores(aligner, photos: np.ndarray, products: np.ndarray):
        desc = aligner.encode([f"{cat.products[e.classes[c]].title}. {cat.products[e.classes[c]].description}"
                               for c in products])
        return photos @ e.iconic_x[products].T, photos @ desc.T

    # alpha (photo vs text weight) chosen inside the 60 seen products: fit on 45, pick on val photos of 15
    inner = rng.permutation(seen)
    a_fit, a_val = np.sort(inner[:45]), np.sort(inner[45:])
    al = fit_on(a_fit)
    vm = np.isin(e.val_y, a_val)
    si, st = scores(al, e.val_x[vm], a_val)
    vy = np.searchsorted(a_val, e.val_y[vm])
    alphas = np.linspace(0, 1, 11)
    alpha = float(alphas[np.argmax([((a * si + (1 - a) * st).argmax(1) == vy).mean() for a in alphas])])

    aligner = fit_on(seen)
    vm = np.isin(e.val_y, new)
    photos, vy = e.val_x[vm], np.searchsorted(new, e.val_y[vm])
    si, st = scores(aligner, photos, new)
    res = {"text_only": float((st.argmax(1) == vy).mean()), "photo_only": float((si.argmax(1) == vy).mean()),
           "combined": float(((alpha * si + (1 - alpha) * st).argmax(1) == vy).mean()), "alpha": alpha,
           "n_val": len(vy)}

    # enrolment with k photos per new product: nearest prototype among the 21, and the imprint path over 81
    # classes (a head trained on the 60 seen products, then the 21 imprinted one by one), 5 draws each.
    seen_m = np.isin(e.train_y, seen)
    Xs = torch.from_numpy(e.train_x[seen_m])
    ys = torch.from_numpy(np.searchsorted(seen, e.train_y[seen_m]))
    torch.manual_seed(SEED)
    probe = torch.nn.Linear(Xs.shape[1], len(seen))
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(probe(Xs * 10), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        seen_val = np.isin(e.val_y, seen)
        before = probe(torch.from_numpy(e.val_x[seen_val]) * 10).argmax(1).numpy()
    res["seen_before"] = float((before == np.searchsorted(seen, e.val_y[seen_val])).mean())
    bank_idx = np.concatenate([rng.permutation(np.flatnonzero(ys.numpy() == c))[:8] for c in range(len(seen))])
    bank, bank_t = Xs[bank_idx] * 10, ys[bank_idx]
    order = np.concatenate([seen, new])  # class index in the enrolled head
    pos_of = {c: i for i, c in enumerate(order)}
    all_val_y = np.array([pos_of[c] for c in e.val_y])
    new_val = np.isin(e.val_y, new)
    for k in (1, 3, 5):
        proto_acc, imp_new, imp_seen = [], [], []
        for draw in range(5):
            r = np.random.default_rng(100 * k + draw)
            picks = [r.choice(np.flatnonzero(e.train_y == c), size=k, replace=False) for c in new]
            protos = np.stack([e.train_x[p].mean(0) for p in picks])
            protos /= np.linalg.norm(protos, axis=1, keepdims=True)
            proto_acc.append(float(((photos @ protos.T).argmax(1) == vy).mean()))
            head = probe
            for p in picks:
                head = imprint_class(head, torch.from_numpy(e.train_x[p]) * 10, bank, bank_t)
            with torch.no_grad():
                pred = head(torch.from_numpy(e.val_x) * 10).argmax(1).numpy()
            imp_new.append(float((pred[new_val] == all_val_y[new_val]).mean()))
            imp_seen.append(float((pred[~new_val] == all_val_y[~new_val]).mean()))
        res[f"enrol_{k}"] = (float(np.mean(proto_acc)), float(np.mean(imp_new)), float(np.mean(imp_seen)))
    rows = [f"| zero-shot: catalogue photo only | {100 * res['photo_only']:.1f} |",
            f"| zero-shot: description only (aligned text) | {100 * res['text_only']:.1f} |",
            (f"| zero-shot: photo + description (alpha = {alpha:.1f}, chosen on 15 of the 60 seen products) "
            f"| {100 * res['combined']:.1f} |")]
    for k in (1, 3, 5):
        p, n, s = res[f"enrol_{k}"]
        rows.append(f"| enrolment, {k} photo(s) per new product: nearest prototype among the 21 | {100 * p:.1f} |")
        rows.append(f"| enrolment, {k} photo(s): imprinted into a 60-class head, ranked among all 81 "
                    f"(seen products' val top-1: {100 * res['seen_before']:.1f} before, {100 * s:.1f} after "
                    f"enrolling the 21) | {100 * n:.1f} |")
    table = (f"Split: 60 seen / 21 new products (seeded permutation), {res['n_val']} val photos of the 21 new ones; "
             f"chance among 21 = {100 / 21:.1f} %. Embeddings: plain pretrained Lite2 (ImageNet), never trained on "
             "these products. Enrolment rows average 5 random draws of the k photos from the new products' train "
             "photos.\n\n| method | top-1 on val photos of the 21 new products |\n|---|---|\n" + "\n".join(rows))
    return table, res


LISTING_STYLES = ("coarse", "sentence", "title", "empty")


def listing_text(rng: np.random.Generator, title: str, coarse: str, description: str) -> str:
    """A marketplace-style listing text, partially informative (documented in RESULTS.md)."""
    style = rng.choice(LISTING_STYLES, p=[0.4, 0.3, 0.2, 0.1])
    if style == "coarse":
        return f"{rng.choice(['Fresh', 'Organic', 'Tasty', 'Good', ''])} {coarse.lower()}".strip()
    if style == "sentence":
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", description) if len(s) > 12] or [coarse]
        return str(rng.choice(sentences))
    if style == "title":
        words = title.split()
        keep = [w for w in words if rng.random() < 0.6] or words[-1:]
        return " ".join(keep)
    return ""


def fusion(cat, e: GroceryEmbeddings) -> tuple[str, dict]:
    from skulens.evaluate.fusion import fusion_accuracies
    from skulens.models.fusion import train_fusion
    from skulens.models.text import load_text_encoder

    rng = np.random.default_rng(SEED)
    enc = load_text_encoder()

    def texts_for(ys):
        t = [listing_text(rng, cat.products[e.classes[y]].title, e.coarse_of[e.classes[y]],
                          cat.products[e.classes[y]].description) for y in ys]
        has = np.array([bool(x) for x in t])
        v = np.zeros((len(t), enc.dim), dtype=np.float32)
        v[has] = enc.encode([x for x in t if x])
        return v, has

    tv, th = texts_for(e.train_y)
    vv, vh = texts_for(e.val_y)
    head = train_fusion(e.train_x, tv, e.train_y, len(e.classes), text_present=th)
    acc = fusion_accuracies(head, e.val_x, vv, vh, e.val_y)
    table = ("Catalogue: grocery train/val photos, each given a **synthetic** listing text (seeded): 40 % a coarse "
             "word ('fresh apple'), 30 % one random sentence of the product description, 20 % the product title "
             "with each word kept with p = 0.6, 10 % no text. Image side: the fine-tuned bundle's embedding; one "
             "fusion head (modality dropout) answers all three rows.\n\n| input | val top-1 |\n|---|---|\n"
             f"| image only | {100 * acc['image_only']:.1f} |\n"
             f"| text only (the {100 * acc['with_text_fraction']:.0f} % of listings with text) | "
             f"{100 * acc['text_only']:.1f} |\n| image + text (fused) | {100 * acc['fused']:.1f} |")
    return table, acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench5/bundle")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "grocery-store"))
    ap.add_argument("--parts", nargs="+", default=["image", "text", "zeroshot", "fusion"])
    ap.add_argument("--no-write", action="store_true")
    ns = ap.parse_args()
    from skulens.data.catalogue import load_catalogue

    cat = load_catalogue(ns.data)
    fine = load_embeddings(ns.bundle, ns.data)
    pre = load_embeddings("pretrained:efficientnet_lite2", ns.data)
    sections = []
    t0 = time.perf_counter()
    if "image" in ns.parts:
        sections.append(("Image search (val photos as queries)", image_search(fine, pre)[0]))
    if "text" in ns.parts:
        sections.append(("Text search", text_search(cat, fine)[0]))
    if "zeroshot" in ns.parts:
        sections.append(("Zero-shot and enrolment", zero_shot(cat, pre)[0]))
    if "fusion" in ns.parts:
        sections.append(("Image + text fusion", fusion(cat, fine)[0]))
    body = "\n\n".join(f"### {t}\n\n{b}" for t, b in sections)
    body += f"\n\nWall time (embeddings cached): {time.perf_counter() - t0:.0f} s. Bundle: `{ns.bundle}`."
    print(body)
    if not ns.no_write:
        append_section("Search, alignment, zero-shot, enrolment and fusion on grocery val",
                       "python benchmarks/search_grocery.py " + " ".join(sys.argv[1:]), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
