"""Listing tags on the Grocery Store val photos: category path, attribute heads, colour names and vocabulary tags.

    python benchmarks/tags_grocery.py [--model runs/bench9/bundle] [--data ../shared/datasets/grocery-store]
        [--tuned runs/bench9-text/bundle] [--no-write]

Everything is measured through `skulens.search.tags.Tagger.tag`, the code behind `skulens tag` and POST /v1/tag,
on the 296 val photos. Ground truth is the photo's product, never a prediction:

- category: the path's last step is the true fine label (fine decisions), its first the true coarse class.
- attributes: each attribute head against the product's row of the grocery attribute table (a photo carries
  its product's attributes), after thresholds and conflict resolution; micro and macro precision/recall.
- colours: the colour names from the pixels (`dominant_colours`) against the table's colour column.
- vocabulary tags. Vocabulary: every attribute value as words ("red", "lactose free", "carton") plus every
  word of the 81 product titles and descriptions (lower case, letters only, 3+ letters, not one of scikit-learn's English stop words) that
  2 to 16 of the 81 products use (shared, but not by a fifth of the catalogue: "arla", "juice", "sweet",
  "citrus"; single-product words are a name, not a tag). A phrase is true for a product when it is one of the
  product's attribute phrases or a word of its title/description. Tags are the top 5 above a score chosen on
  the *train* photos (the cutoff that maximises micro F1 there; val never chooses anything); mAP ranks the
  whole vocabulary per photo. Modes: "text" (through the recognised product's texts, the bundle's text
  encoder: bench9 has none, so MiniLM; with --tuned, also the `skulens text-tune`d encoder of that bundle,
  which was tuned on these very product texts, so its row is optimistic), "aligned" (through a text aligner
  fitted here as `skulens align` fits one, on the train photos and the catalogue photos: bench9 has none).
  Reference rows: "lookup" (the recognised product's own true phrases: the ceiling of any tagger that first
  recognises the product, since the truth is defined from product texts) and "chance" (the base rate).

Appends to RESULTS.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from _results import append_section

TOP_K = 5


def words(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in re.findall(r"[^\W\d_]+", text.lower()) if len(w) >= 3 and w not in ENGLISH_STOP_WORDS}


def attribute_phrase(a: str) -> str:
    return (a.split("=", 1)[1] if "=" in a else a).replace("_", " ").lower()


def vocabulary(cat) -> tuple[list[str], dict[str, set[str]]]:
    """The phrases, and per product the phrases true for it (see the module docstring)."""
    text = {c: words(f"{p.title} {p.description}") for c, p in cat.products.items()}
    attrs = {c: {attribute_phrase(a) for a in p.attributes} for c, p in cat.products.items()}
    df: dict[str, int] = {}
    for ws in text.values():
        for w in ws:
            df[w] = df.get(w, 0) + 1
    vocab = sorted({w for w, n in df.items() if 2 <= n <= 16} | {a for s in attrs.values() for a in s})
    return vocab, {c: (text[c] | attrs[c]) & set(vocab) for c in cat.products}


def prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def decode(model, paths):
    from skulens.data.dataset import decode_all

    d = decode_all([Path(p) for p in paths], model.card.resize_to, workers=2, progress=False)
    if d.failed:
        raise RuntimeError(f"undecodable grocery images: {d.failed[:3]}")
    return d.images


def fit_aligner(model, cat, train_emb, train_labels):
    """As `skulens align` (align_catalogue): train photos + catalogue photos, each product's sentences."""
    from skulens.search.align import AlignConfig, product_sentences, train_aligner

    labels = sorted(set(cat.products))
    index = {c: i for i, c in enumerate(labels)}
    iconic = model.run(decode(model, [cat.products[c].image for c in labels]), embeddings=True).embeddings
    x = np.concatenate([train_emb, iconic])
    y = [index[c] for c in train_labels] + list(range(len(labels)))
    texts = [product_sentences(cat.products[c].title, cat.products[c].description, cat.products[c].info)
             for c in labels]
    return train_aligner(x, y, texts, config=AlignConfig(), bundle=model.path)


def choose_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The cutoff (top-5 kept) with the best micro F1 on these photos."""
    order = np.argsort(-scores, axis=1)[:, :TOP_K]
    top = np.zeros_like(truth)
    np.put_along_axis(top, order, True, axis=1)
    best, best_f1 = 0.0, -1.0
    for t in np.unique(np.round(np.quantile(scores[top], np.linspace(0, 1, 201)), 3)):
        pred = top & (scores >= t)
        f1 = prf(int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))[2]
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/bench9/bundle")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "datasets" / "grocery-store"))
    ap.add_argument("--tuned", default="runs/bench9-text/bundle", help="a bundle with a text-tuned encoder ('' off)")
    ap.add_argument("--limit", type=int, default=0, help="first N train and val photos only (a dry run; implies --no-write)")
    ap.add_argument("--no-write", action="store_true")
    ns = ap.parse_args()

    from sklearn.metrics import average_precision_score

    import skulens
    from skulens.data.catalogue import load_catalogue
    from skulens.models.text import bundle_text_model
    from skulens.search.tags import Tagger

    t_start = time.perf_counter()
    cat = load_catalogue(ns.data)
    model = skulens.load(ns.model)
    card = model.card
    products = cat.products  # the product sheets, as `skulens tag --data` reads them
    train, val = cat.split("train"), cat.split("val")
    if ns.limit:
        train, val, ns.no_write = train[:: len(train) // ns.limit], val[:: len(val) // ns.limit], True
    vocab, true_phrases = vocabulary(cat)

    # Train photos: one pass for the aligner's image side and for choosing the score cutoffs.
    t0 = time.perf_counter()
    heads = model.run(decode(model, [s.path for s in train]), embeddings=True, batch_size=64)
    aligner = fit_aligner(model, cat, heads.embeddings, [s.label for s in train])
    prep_s = time.perf_counter() - t0
    train_truth = np.array([[p in true_phrases[s.label] for p in vocab] for s in train])

    modes = {"text (MiniLM)": Tagger(model, products=products, mode="text"),
             "aligned": Tagger(model, products=products, aligner=aligner, mode="aligned")}
    tuned = bundle_text_model(ns.tuned) if ns.tuned else None
    if tuned:
        modes["text (text-tuned encoder)"] = Tagger(model, products=products, mode="text", text_model=tuned)
    cutoffs = {name: choose_threshold(tg.vocabulary(vocab).scores(heads.embeddings, heads.fine), train_truth)
               for name, tg in modes.items()}

    # Val photos, through Tagger.tag: every phrase scored (for mAP), then top 5 above the train cutoff.
    paths = [str(s.path) for s in val]
    truth = np.array([[p in true_phrases[s.label] for p in vocab] for s in val])
    results, timing = {}, {}
    for name, tg in modes.items():
        t0 = time.perf_counter()
        results[name] = tg.tag(paths, vocabulary=vocab, top_k=len(vocab), min_score=-2.0, colours=name == "aligned")
        timing[name] = (time.perf_counter() - t0) / len(paths)
    tags = results["aligned"]  # category, attributes and colours do not depend on the mode

    # Category path.
    fine_level = [t for t in tags if t.category[-1].level == "fine"]
    fine_ok = sum(t.category[-1].label == s.label for t, s in zip(tags, val, strict=True)
                  if t.category[-1].level == "fine")
    coarse_ok = sum(t.category[0].label == s.coarse_label for t, s in zip(tags, val, strict=True))
    path_ok = sum(t.category[-1].label in (s.label, s.coarse_label) for t, s in zip(tags, val, strict=True))

    # Attribute heads vs the attribute table.
    attr_rows, micro = [], [0, 0, 0]
    f1s = []
    for a in card.attributes:
        pred = np.array([a in dict(t.attributes) for t in tags])
        true = np.array([a in s.attributes for s in val])
        tp, npred, ntrue = int((pred & true).sum()), int(pred.sum()), int(true.sum())
        micro = [micro[0] + tp, micro[1] + npred, micro[2] + ntrue]
        p, r, f = prf(tp, npred, ntrue)
        if ntrue:
            f1s.append(f)
        attr_rows.append(f"| {a} | {ntrue} | {npred} | {100 * p:.1f} | {100 * r:.1f} | {100 * f:.1f} |")
    mp, mr, mf = prf(*micro)

    # Colour names from the pixels vs the table's colour column.
    ctp = cpred = ctrue = 0
    for t, s in zip(tags, val, strict=True):
        names = {c for c, _ in t.colours}
        table = {a.split("=", 1)[1] for a in s.attributes if a.startswith("colour=")}
        ctp, cpred, ctrue = ctp + len(names & table), cpred + len(names), ctrue + len(table)
    cp, cr, cf = prf(ctp, cpred, ctrue)
    head_colours = [a for a in card.attributes if a.startswith("colour=")]
    htp = sum(len({a for a, _ in t.attributes if a in head_colours} & set(s.attributes)) for t, s in zip(tags, val, strict=True))
    hpred = sum(len({a for a, _ in t.attributes if a in head_colours}) for t in tags)
    hp, hr, hf = prf(htp, hpred, sum(len([a for a in s.attributes if a.startswith("colour=")]) for s in val))

    # Vocabulary tags.
    rows = []
    for name, res in results.items():
        index = {p: j for j, p in enumerate(vocab)}
        scores = np.full(truth.shape, -2.0)
        for i, t in enumerate(res):
            for p, sc in t.tags:
                scores[i, index[p]] = sc
        order = np.argsort(-scores, axis=1)
        top = np.zeros_like(truth)
        np.put_along_axis(top, order[:, :TOP_K], True, axis=1)
        pred = top & (scores >= cutoffs[name])
        p, r, f = prf(int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))
        p1 = float(np.mean(truth[np.arange(len(truth)), order[:, 0]]))
        m = float(np.mean([average_precision_score(truth[i], scores[i]) for i in range(len(truth)) if truth[i].any()]))
        rows.append(f"| {name} | {cutoffs[name]:.3f} | {pred.sum(1).mean():.1f} | {100 * p:.1f} | {100 * r:.1f} | "
                    f"{100 * f:.1f} | {100 * p1:.1f} | {m:.3f} | {1000 * timing[name]:.0f} |")
    lookup = np.array([[p in true_phrases.get(t.category[-1].label, set()) for p in vocab] for t in tags])
    lp, lr, lf = prf(int((lookup & truth).sum()), int(lookup.sum()), int(truth.sum()))
    rows.append(f"| lookup (recognised product's own phrases) | - | {lookup.sum(1).mean():.1f} | {100 * lp:.1f} | "
                f"{100 * lr:.1f} | {100 * lf:.1f} | - | - | - |")
    rows.append(f"| chance (base rate) | - | - | {100 * truth.mean():.1f} | - | - | {100 * truth.mean():.1f} | - | - |")

    n = len(val)
    body = f"""Model `{ns.model}` on the {n} grocery val photos (test split untouched), through `Tagger.tag` (the code
behind `skulens tag` and POST /v1/tag). Truth is the photo's product: its labels, its row of the grocery
attribute table and its title/description words. Vocabulary: {len(vocab)} phrases (the attribute values as
words, plus the title/description words that 2 to 16 of the 81 products use; see the script's docstring); a
phrase is true for a product when it is one of its attribute phrases or a word of its title/description.

**Category path** (coarse > fine): fine decisions {len(fine_level)} of {n}, of which right {fine_ok}
({100 * fine_ok / max(len(fine_level), 1):.1f}%); coarse step right {coarse_ok} ({100 * coarse_ok / n:.1f}%);
the most specific step names the product or its coarse class for {path_ok} ({100 * path_ok / n:.1f}%).

**Attribute heads** vs the attribute table (thresholds from the card, conflicts resolved
{"with the card's pairs" if card.attribute_exclusive else "with the pairs the catalogue implies (the card has none)"}):
micro precision {100 * mp:.1f}, recall {100 * mr:.1f}, F1 {100 * mf:.1f}; macro F1 {100 * np.mean(f1s):.1f} over the
{len(f1s)} attributes present in val.

| attribute | val photos | predicted | precision | recall | F1 |
|---|---|---|---|---|---|
{chr(10).join(attr_rows)}

**Colour names** vs the table's colour column: from the pixels (k-means in Lab over the centre crop, 12 names)
precision {100 * cp:.1f}, recall {100 * cr:.1f}, F1 {100 * cf:.1f} ({cpred / n:.1f} names per photo); the colour heads
(trained on the table) for comparison: precision {100 * hp:.1f}, recall {100 * hr:.1f}, F1 {100 * hf:.1f}.
In-store photos are mostly shelf and crate around the product, so the pixels name the scene's colours as much
as the product's: a seller's own photo on a plain background is the case the pixel colours are for.

**Vocabulary tags** (top {TOP_K} above the cutoff chosen on the 2640 train photos; P@1 and mAP rank the whole
vocabulary; ms per photo on this machine, colours included only in the aligned row):

| mode | cutoff (train) | tags/photo | precision | recall | F1 | P@1 | mAP | ms/photo |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The aligner was fitted here as `skulens align` fits one ({len(train)} train photos + 81 catalogue photos, 400
steps; {prep_s:.0f} s with the train pass). skulens.search.tags' DEFAULT_MIN_SCORE takes its values from the
train cutoffs of the MiniLM text and aligned rows. The truth is built from the product texts, which the text
mode reads and the lookup row copies: on it "text" is expected to lead, and the lookup row is its ceiling. Total
{time.perf_counter() - t_start:.0f} s."""
    print(body)
    if not ns.no_write:
        append_section("Listing tags on grocery (category, attributes, colours, vocabulary)",
                       "python " + " ".join([Path(__file__).relative_to(HERE.parent).as_posix(), *sys.argv[1:]]),
                       body)


if __name__ == "__main__":
    main()
