"""`skulens recommend for | generate | evaluate | pseudonymise`: recommendations from a behaviour log (thin
handlers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import (
    UsageError,
    add_data,
    add_key_file,
    add_model,
    add_out,
    add_quiet,
    add_top_k,
    check_out_path,
    data_path,
    model_path,
    positive_int,
    pseudonymizer,
    say,
    user_id_arg,
)

__all__ = ["add_commands"]


def _load(bundle: str | None) -> Any:
    if not bundle:
        return None
    from ..models.predictor import load_model

    return load_model(bundle)


def _recommender(ns: argparse.Namespace) -> Any:
    """The same recommender the service builds from the same log, catalogue and model."""
    bundle = model_path(ns)
    content = ns.kind != "popularity"  # popularity reads neither product texts nor photos
    data = data_path(ns, model=bundle) if ns.data or content else None  # checked before torch loads
    from ..data.catalogue import class_products, load_catalogue
    from ..recommend.recommenders import fit_recommender
    from ..recommend.shopping_log import read_events

    events = read_events(ns.events)
    key = pseudonymizer(ns)
    if key is None and getattr(ns, "user", None) and events:
        from ..serve.privacy import KEY_ENV, is_pseudonym

        if all(is_pseudonym(e.user_id) for e in events):  # every asked user would look new: the popular list
            raise UsageError(f"{ns.events}: its user ids are pseudonyms: give --pseudonym-key-file (or "
                             f"${KEY_ENV}) to find --user among them")
    if key is not None:  # as the service does: the log's ids and the asked ones meet as pseudonyms
        from ..serve.privacy import pseudonymize_events

        events = list(pseudonymize_events(events, key))
    # Every class is a product (the service's products_from_catalogue): a folder or manifest catalogue without
    # products.csv still has content for `--kind content` and the hybrid.
    products = _with_model_products(class_products(load_catalogue(data)) if data else None, bundle)
    events, left_out = _only_known(events, products, ns.events)
    known = {e.product_id for e in events} | set(products or ())
    for flag, asked in (("--seed-product", getattr(ns, "seed_product", None)), ("--similar", getattr(ns, "similar", None))):
        unknown = [p for p in dict.fromkeys(asked or ()) if p not in known]
        if unknown and unknown[0] in left_out:
            raise UsageError(f"{flag} {unknown[0]!r}: in the behaviour log, but neither the catalogue nor the model "
                             "has it, so it is left out (as the service leaves it out)")
        if unknown:  # a typo changed nothing (the plain popular list came back); said before any model loads or
            import difflib  # any answer is printed (--similar failed after the users' lines)

            close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
            raise UsageError(f"{flag} {unknown[0]!r}: no such product in the behaviour log or the catalogue"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))
    model = _load(bundle) if content else None
    return fit_recommender(events, products, kind=ns.kind, model=model)


def _recs_json(recs: list[Any]) -> list[dict[str, Any]]:
    return [{"product_id": r.product_id, "score": round(float(r.score), 6), "reason": r.reason} for r in recs]


def cmd_recommend(ns: argparse.Namespace) -> int:
    if not ns.user and not ns.similar:
        raise UsageError("give --user USER_ID or --similar PRODUCT_ID")
    if not ns.user and (ns.seed_product or ns.include_seen):  # read for users only: ignored beside --similar
        raise UsageError(f"{'--seed-product' if ns.seed_product else '--include-seen'}: a setting of a user's "
                         "recommendations (--user); --similar lists products like a product")
    rec = _recommender(ns)
    key = pseudonymizer(ns)
    for u in ns.user or ():
        recs = rec.recommend(key(u) if key is not None else u, ns.top_k, exclude_seen=not ns.include_seen,
                             seed_products=tuple(ns.seed_product or ()))
        print(json.dumps({"user_id": u, "recommendations": _recs_json(recs)}))
    for p in ns.similar or ():
        print(json.dumps({"product_id": p, "similar": _recs_json(rec.similar(p, ns.top_k))}))
    return 0


def cmd_recommend_generate(ns: argparse.Namespace) -> int:
    data = data_path(ns)
    check_out_path(ns.out, "--out")
    if Path(ns.out).suffix.lower() in (".json", ".jsonl", ".parquet", ".tsv"):  # it wrote CSV into gen.json
        raise UsageError(f"--out {ns.out}: the behaviour log is CSV (user_id,product_id,event,timestamp): name the "
                         "file .csv")
    from ..data.catalogue import load_catalogue
    from ..recommend.shopping_log import generate_shopping_log, write_events

    cat = load_catalogue(data)
    products = [(p, cat.hierarchy.get(p, p)) for p in cat.classes]
    events = generate_shopping_log(products, n_users=ns.users, seed=ns.seed)
    write_events(ns.out, events)
    say(f"{ns.out}: {len(events)} SYNTHETIC events of {ns.users} users over {len(products)} products "
        "(see skulens.recommend.shopping_log for how they are generated)")
    return 0


def _with_model_products(products: Any, bundle: str | None) -> Any:
    """The catalogue's products and, as the service has them, the model's classes and enrolled products (the card
    read without torch; a bare .onnx without its card.json adds none). None: no catalogue was read."""
    from ..data.locate import card_json

    card = card_json(bundle) if bundle and not bundle.startswith("pretrained:") else None
    if card is not None:
        from ..models.card import ModelCard, model_products

        try:
            products = model_products(ModelCard.from_dict(card), products)
        except (TypeError, ValueError):  # not a card: loading the model (content kinds) says what is wrong
            pass
    return products


def _only_known(events: list[Any], products: Any, source: str) -> tuple[list[Any], set[str]]:
    """The events of products the catalogue or the model has (as the service: another is never recommended, and
    it would count in the scores), said in a line when some are left out; and the products left out."""
    if products is None:
        return events, set()
    kept = [e for e in events if e.product_id in products]
    if len(kept) == len(events):
        return events, set()
    left_out = {e.product_id for e in events} - set(products)
    say(f"skulens recommend: left out {len(events) - len(kept)} event(s) of {len(left_out)} product(s) that "
        f"neither the catalogue nor the model has, e.g. {min(left_out)!r}")
    if not kept:
        raise UsageError(f"{source}: none of its products is in the catalogue or the model")
    return kept, left_out


def cmd_recommend_evaluate(ns: argparse.Namespace) -> int:
    bundle = model_path(ns)
    data = data_path(ns, model=bundle)
    from ..data.catalogue import class_products, load_catalogue
    from ..recommend.recommenders import create_recommender, evaluate, item_vectors, leave_last_out
    from ..recommend.shopping_log import read_events

    products = _with_model_products(class_products(load_catalogue(data)), bundle)  # before the text model loads
    events, _ = _only_known(read_events(ns.events), products, ns.events)
    train, test = leave_last_out(events)
    if not test:  # zeros printed as if measured would read as three recommenders that never hit
        raise UsageError(f"--events {ns.events}: no user touched two or more products, so none can be held out "
                         "and scored (leave-last-out needs a history before the held-out product)")
    vectors = item_vectors(products, _load(bundle))
    for kind in ("popularity", "content", "hybrid"):
        rec = create_recommender(kind, **({} if kind == "popularity" else {"item_vectors": vectors}))
        rep = evaluate(rec, train, test, k=ns.top_k, catalogue=list(products))
        print(json.dumps({"recommender": kind, "hit_rate": rep.hit_rate, "ndcg": rep.ndcg,
                          "coverage": rep.coverage, "users": rep.n_users, "k": rep.k}))
    return 0


def _model_flag(p: argparse.ArgumentParser) -> None:
    add_model(p, "bundle whose catalogue-photo embeddings join the text content vectors", required=False,
              positional_legacy=False)


def add_commands(sub: Any) -> None:
    r = sub.add_parser("recommend", help="recommendations from a behaviour log (CSV user_id,product_id,event,timestamp)")
    rsub = r.add_subparsers(dest="recommend_command", required=True, metavar="{for,generate,evaluate,pseudonymise}")
    g = rsub.add_parser("for", help="recommend for users, or products similar to a product")
    g.add_argument("--events", required=True, help="behaviour log CSV")
    add_data(g, "catalogue (products and their texts; default: --model's recorded dataset, else the grocery "
                "dataset; --kind popularity reads one only when given, and then recommends only its products)")
    _model_flag(g)
    g.add_argument("--kind", choices=("hybrid", "content", "popularity"), default="hybrid",
                   help="recommender (default: hybrid)")
    g.add_argument("--user", nargs="+", action="extend", type=user_id_arg, help="user id(s); repeatable")
    g.add_argument("--similar", nargs="+", action="extend", help="product id(s); repeatable")
    g.add_argument("--seed-product", action="append", help="for a user with no history: products they look at now")
    g.add_argument("--include-seen", action="store_true", help="also recommend products the user already had")
    add_top_k(g, 10, "recommendations per user or product")
    add_key_file(g, " (given one: the log's user ids and --user are matched as pseudonyms)")
    add_quiet(g, "no progress bars or library INFO lines (loading the text encoder)")
    g.set_defaults(func=cmd_recommend)
    gen = rsub.add_parser("generate", help="write a SYNTHETIC shopping log for a catalogue (documented generator)")
    add_data(gen, "catalogue (default: the grocery dataset)")
    gen.add_argument("--users", type=positive_int, default=2000, help="synthetic users (default: 2000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_out(gen, "CSV file to write", required=True)
    gen.set_defaults(func=cmd_recommend_generate)
    ev = rsub.add_parser("evaluate", help="leave-last-out HitRate@k / NDCG@k: popularity vs content vs hybrid")
    ev.add_argument("--events", required=True, help="behaviour log CSV")
    add_data(ev, "catalogue (default: --model's recorded dataset, else the grocery dataset)")
    _model_flag(ev)
    add_top_k(ev, 10, "cut-off k of HitRate@k and NDCG@k")
    add_quiet(ev, "no progress bars or library INFO lines (loading the text encoder)")
    ev.set_defaults(func=cmd_recommend_evaluate)
    ps = rsub.add_parser("pseudonymise", help="rewrite a behaviour log with keyed-hash pseudonyms for user ids")
    ps.add_argument("--events", required=True, help="behaviour log CSV")
    add_out(ps, "CSV file to write (the pseudonymised log)", required=True)
    add_key_file(ps)
    ps.set_defaults(func=cmd_recommend_pseudonymise)


def cmd_recommend_pseudonymise(ns: argparse.Namespace) -> int:
    from ..recommend.shopping_log import read_events, write_events
    from ..serve.privacy import pseudonymize_events

    check_out_path(ns.out, "--out")
    key = pseudonymizer(ns, required=True, data_files=(ns.events, ns.out))  # not beside the log it undoes
    events = read_events(ns.events)
    write_events(ns.out, pseudonymize_events(events, key))
    say(f"{ns.out}: {len(events)} events of {len({e.user_id for e in events})} users, user ids pseudonymised "
        "(keep the key apart from the log)")
    return 0
