"""Behaviour logs (CSV and the synthetic generator), the three recommenders and leave-last-out evaluation."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from skulens.recommend.recommenders import (
    ContentRecommender,
    HybridRecommender,
    PopularityRecommender,
    UnknownProductError,
    cold_start_split,
    create_recommender,
    evaluate,
    leave_last_out,
    ranking_metrics,
)
from skulens.recommend.shopping_log import (
    Event,
    ShoppingLogError,
    generate_shopping_log,
    read_events,
    write_events,
)

# Six categories of five products; content vectors know the category (plus a little noise), nothing else.
CATALOGUE = [(f"{c}-{i}", c) for c in ("apple", "milk", "bread", "juice", "cheese", "tea") for i in range(5)]


def content_vectors(noise: float = 0.3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    categories = sorted({c for _, c in CATALOGUE})
    out = {}
    for product, category in CATALOGUE:
        v = np.zeros(len(categories) + 8)
        v[categories.index(category)] = 1.0
        v[len(categories):] = noise * rng.normal(size=8)
        out[product] = v / np.linalg.norm(v)
    return out


def ev(user: str, product: str, t: float, kind: str = "purchase") -> Event:
    return Event(user, product, kind, float(t))


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_round_trip(tmp_path: Path) -> None:
    events = generate_shopping_log(CATALOGUE, n_users=20, mean_events=5, seed=1)
    path = write_events(tmp_path / "log" / "events.csv", events)
    assert read_events(path) == events
    assert path.read_text().splitlines()[0] == "user_id,product_id,event,timestamp"


@pytest.fixture
def new_york_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local zone that is not UTC, so that a zone-less timestamp read as local time would show."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york_time")
def test_csv_accepts_iso_and_unix_seconds(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("timestamp,event,product_id,user_id,extra\n"
                    "2024-01-01T00:00:10Z,view,a,u1,x\n"
                    "2024-01-01T01:00:10+01:00,VIEW,b,u1,\n"
                    "2024-01-01 00:00:30,cart,c,u2,\n"
                    "1704067240.5,purchase,d,u2,\n\n")
    events = read_events(path)
    base = 1704067200.0  # 2024-01-01T00:00:00Z
    assert [e.timestamp - base for e in events] == [10.0, 10.0, 30.0, 40.5]
    assert [e.event for e in events] == ["view", "view", "cart", "purchase"]
    assert events[0] == Event("u1", "a", "view", base + 10)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file"),
    ("user_id,product_id,event\nu,p,view\n", "line 1: missing column(s) timestamp"),
    ("user_id,product_id,event,timestamp\n", "no events"),
    ("user_id,product_id,event,timestamp\nu,p,view,1\nu,p,view,soon\n", "line 3: bad timestamp 'soon'"),
    ("user_id,product_id,event,timestamp\nu,p,view,nan\n", "line 2: bad timestamp"),
    ("user_id,product_id,event,timestamp\nu,p,click,1\n", "line 2: unknown event 'click'"),
    ("user_id,product_id,event,timestamp\n,p,view,1\n", "line 2: empty user_id"),
    ("user_id,product_id,event,timestamp\nu,p,view\n", "line 2: expected 4 columns"),
])
def test_csv_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ShoppingLogError) as info:
        read_events(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_csv_missing_file_and_custom_event_types(tmp_path: Path) -> None:
    with pytest.raises(ShoppingLogError, match="cannot read"):
        read_events(tmp_path / "nope.csv")
    path = tmp_path / "log.csv"
    path.write_text("user_id,product_id,event,timestamp\nu,p,click,1\n")
    assert read_events(path, event_types=("click",))[0].event == "click"


# ---------------------------------------------------------------------------------------------
# the synthetic generator


def test_generator_is_deterministic_and_ordered() -> None:
    a = generate_shopping_log(CATALOGUE, n_users=50, seed=3)
    assert a == generate_shopping_log(CATALOGUE, n_users=50, seed=3)
    assert a != generate_shopping_log(CATALOGUE, n_users=50, seed=4)
    assert len({e.user_id for e in a}) == 50
    assert {e.product_id for e in a} <= {p for p, _ in CATALOGUE}
    by_user = defaultdict(list)
    for e in a:
        by_user[e.user_id].append(e.timestamp)
    assert all(times == sorted(times) for times in by_user.values())
    kinds = Counter(e.event for e in a)
    assert kinds["view"] > kinds["cart"] > 0 and kinds["purchase"] > 0


def _top_share(events: list[Event], fraction: float = 0.2) -> float:
    counts = np.sort(np.array(list(Counter(e.product_id for e in events).values())))[::-1]
    return counts[: max(1, round(fraction * len(CATALOGUE)))].sum() / counts.sum()


def test_generator_popularity_skew_is_measurable() -> None:
    skewed = generate_shopping_log(CATALOGUE, n_users=400, seed=0)
    flat = generate_shopping_log(CATALOGUE, n_users=400, seed=0, zipf=0.0, category_skew=0.0)
    assert _top_share(skewed) > 0.45  # the top 20% of products; 0.2 would be no skew at all
    assert _top_share(skewed) > _top_share(flat) + 0.15


def _mean_top_category_share(events: list[Event]) -> float:
    category = dict(CATALOGUE)
    per_user: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        per_user[e.user_id][category[e.product_id]] += 1
    return float(np.mean([sum(n for _, n in c.most_common(2)) / sum(c.values()) for c in per_user.values()]))


def test_generator_users_concentrate_on_their_taste() -> None:
    events = generate_shopping_log(CATALOGUE, n_users=300, mean_events=20, seed=0, noise=0.1)
    # The same events dealt to users at random: what taste-free users would look like.
    users = np.random.default_rng(0).permutation([e.user_id for e in events])
    shuffled = [Event(u, e.product_id, e.event, e.timestamp) for u, e in zip(users, events, strict=True)]
    assert _mean_top_category_share(events) > 0.75
    assert _mean_top_category_share(events) > _mean_top_category_share(shuffled) + 0.25


def test_generator_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unique"):
        generate_shopping_log([("a", "x"), ("a", "y")])
    with pytest.raises(ValueError, match="probabilities"):
        generate_shopping_log(CATALOGUE, noise=1.5)


# ---------------------------------------------------------------------------------------------
# recommenders on hand-made logs

HAND = [
    ev("u1", "a", 1), ev("u1", "b", 2), ev("u1", "c", 3, "view"),
    ev("u2", "a", 1), ev("u2", "b", 2),
    ev("u3", "a", 1, "view"), ev("u3", "d", 2, "cart"),
    ev("u4", "c", 1, "view"), ev("u4", "c", 2, "view"),
]


def test_popularity_is_exact() -> None:
    rec = PopularityRecommender().fit(HAND, catalogue=["a", "b", "c", "d", "e"])
    # weighted counts: a 5+5+1 = 11, b 10, c 3, d 3 (ties by product id), e 0
    assert [r.product_id for r in rec.recommend("nobody", k=5)] == ["a", "b", "c", "d", "e"]
    assert [r.product_id for r in rec.recommend("u1", k=5)] == ["d", "e"]  # a, b and c seen
    assert [r.product_id for r in rec.recommend("u1", k=2, exclude_seen=False)] == ["a", "b"]
    assert {r.reason for r in rec.recommend("u1")} == {"popular"}
    assert rec.recommend("nobody", k=1)[0].score == pytest.approx(1.0)


def test_co_occurrence_recommends_the_co_bought_product() -> None:
    log = [ev(f"u{i}", p, t) for i in range(20) for t, p in enumerate(("bread", "butter"))]
    log += [ev(f"v{i}", "milk", 1) for i in range(40)]  # milk is far more popular, bought alone
    log += [ev("me", "bread", 1)]
    rec = HybridRecommender().fit(log)
    top = rec.recommend("me", k=2)
    assert top[0].product_id == "butter" and top[0].reason == "often together with bread"
    assert PopularityRecommender().fit(log).recommend("me", k=1)[0].product_id == "milk"
    assert rec.similar("bread", k=1)[0].product_id == "butter"


def test_cold_start_product_is_reached_through_content() -> None:
    vectors = content_vectors(noise=0.1)
    new = "apple-4"
    log = generate_shopping_log(CATALOGUE, n_users=200, seed=0)
    log = [e for e in log if e.product_id != new]
    log += [ev("fan", "apple-0", 1), ev("fan", "apple-1", 2)]
    for rec in (ContentRecommender(vectors), HybridRecommender(vectors)):
        rec.fit(log)
        top = rec.recommend("fan", k=5)
        assert new in [r.product_id for r in top], rec.name
        assert new in [r.product_id for r in rec.similar("apple-0", k=4)], rec.name
    hybrid_reason = {r.product_id: r.reason for r in rec.recommend("fan", k=5)}[new]
    assert "apple-" in hybrid_reason
    # products "similar" to the new one: nothing was ever bought with it, so no reason may say so
    reasons = [r.reason for r in rec.similar(new, k=6)]
    assert not any(r.startswith("often together") for r in reasons), reasons
    assert f"bought with products like {new}" in reasons  # the borrowed co-occurrence, said as such
    # a newcomer looking at the new product: the same, not "often together with" it (nobody ever had it)
    seeded = [r.reason for r in rec.recommend("newcomer", k=6, seed_products=[new])]
    assert not any(r.startswith("often together") for r in seeded), seeded
    assert f"bought with products like {new}" in seeded
    popularity = PopularityRecommender().fit(log, catalogue=vectors)
    assert new not in [r.product_id for r in popularity.recommend("fan", k=10)]


def test_cold_start_users_get_popularity_or_their_seed() -> None:
    vectors = content_vectors()
    log = generate_shopping_log(CATALOGUE, n_users=100, seed=0)
    popular = [r.product_id for r in PopularityRecommender().fit(log).recommend("new", k=5)]
    for rec in (ContentRecommender(vectors), HybridRecommender(vectors)):
        rec.fit(log)
        assert [r.product_id for r in rec.recommend("new", k=5)] == popular
        # A seed nobody knows is refused, as the CLI and REST refuse it (it came back as the popular list,
        # unsaid), and one id is not a list of its letters.
        with pytest.raises(UnknownProductError, match="unknown seed product 'mystery'"):
            rec.recommend("new", k=5, seed_products=["mystery"])
        with pytest.raises(UnknownProductError, match="did you mean tea-"):
            rec.recommend("new", k=5, seed_products=["tea-O"])
        with pytest.raises(TypeError, match="not one string"):
            rec.recommend("new", k=5, seed_products="tea-0")
        seeded = rec.recommend("new", k=3, seed_products=["tea-0"])
        assert "tea-0" not in [r.product_id for r in seeded]
        assert all(r.product_id.startswith("tea-") for r in seeded), (rec.name, seeded)


def test_exclude_seen() -> None:
    log = generate_shopping_log(CATALOGUE, n_users=100, seed=0)
    rec = HybridRecommender(content_vectors()).fit(log)
    seen = {e.product_id for e in log if e.user_id == "u00000"}
    assert not seen & {r.product_id for r in rec.recommend("u00000", k=30)}
    assert len(rec.recommend("u00000", k=30)) == len(CATALOGUE) - len(seen)
    assert seen & {r.product_id for r in rec.recommend("u00000", k=30, exclude_seen=False)}


def test_hybrid_similar_says_popular_when_nothing_links_the_products() -> None:
    """A product with no content neighbour and no co-buyer: the list is the best-sellers, and each said
    "similar content" (both parts were 0)."""
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.0, 1.0]}  # a shares nothing with b and c
    rec = HybridRecommender(vectors).fit([ev("u1", "b", 1), ev("u2", "b", 2), ev("u3", "c", 3), ev("u4", "a", 4)])
    out = rec.similar("a", k=2)
    assert [r.product_id for r in out] == ["b", "c"] and {r.reason for r in out} == {"popular"}
    assert rec.similar("b", k=1)[0].reason == "similar content"  # c: the same vector
    assert rec.knows("a") and not rec.knows("zzz")


def test_content_similar_and_errors() -> None:
    vectors = {"a": [1.0, 0.0], "b": [0.9, 0.1], "c": [0.0, 1.0]}
    rec = ContentRecommender(vectors).fit([ev("u", "c", 1)])
    assert [r.product_id for r in rec.similar("a", k=2)] == ["b", "c"]
    assert rec.similar("a", k=1)[0].score == pytest.approx(0.9 / math.hypot(0.9, 0.1), abs=1e-5)
    with pytest.raises(UnknownProductError, match="'zzz'"):
        rec.similar("zzz")
    with pytest.raises(ValueError, match="no weight for event type"):
        PopularityRecommender().fit([ev("u", "a", 1, "click")])
    with pytest.raises(ValueError, match="zero"):
        ContentRecommender({"a": [0.0, 0.0]})
    with pytest.raises(RuntimeError, match="fit"):
        PopularityRecommender().recommend("u")
    assert isinstance(create_recommender("popularity"), PopularityRecommender)
    with pytest.raises(ValueError, match="unknown recommender"):
        create_recommender("magic")
    # the API's argument types: k=2.5 was NumPy's "slice indices must be integers", tuples for events
    # "'tuple' object has no attribute 'event'"
    for bad_k in (2.5, "3", True, 0):
        with pytest.raises(ValueError, match="k must be a whole number >= 1"):
            rec.similar("a", k=bad_k)
    assert len(rec.recommend("u", k=np.int64(1))) == 1  # a NumPy integer is a whole number
    for kind in (PopularityRecommender(), HybridRecommender()):
        with pytest.raises(TypeError, match=r"events\[0\]: an Event\(user_id, product_id, event, timestamp\)"):
            kind.fit([("u", "a", "view", 1.0)])


# ---------------------------------------------------------------------------------------------
# evaluation


def test_leave_last_out() -> None:
    log = [
        ev("u1", "a", 1, "view"), ev("u1", "b", 2, "view"), ev("u1", "b", 3, "cart"),
        ev("u1", "a", 4, "view"),
        ev("u1", "c", 5, "view"), ev("u1", "c", 5, "purchase"),  # same second: file order decides
        ev("u2", "a", 9, "view"), ev("u2", "a", 10, "purchase"),  # one product only: not tested
        ev("u3", "b", 2, "view"), ev("u3", "a", 1, "view"),  # out of order in the file
        ev("u4", "a", 1), ev("u4", "b", 2), ev("u4", "a", 3),  # a repeat purchase held out
    ]
    train, test = leave_last_out(log)
    assert test == {"u1": "c", "u3": "b", "u4": "a"}
    assert [e for e in train if e.user_id == "u1"] == log[:4]
    assert [e for e in train if e.user_id == "u2"] == log[6:8]
    assert [e.product_id for e in train if e.user_id == "u3"] == ["a"]
    assert [e.product_id for e in train if e.user_id == "u4"] == ["b"]  # every event on the held-out product

    # Discovery mode: the most recent first-time product; the user's events from its first touch on go.
    train, test = leave_last_out(log, novel=True)
    assert test == {"u1": "c", "u3": "b", "u4": "b"}
    assert [e for e in train if e.user_id == "u1"] == log[:4]
    assert [e for e in train if e.user_id == "u2"] == log[6:8]
    assert [e.product_id for e in train if e.user_id == "u4"] == ["a"]  # the later return to a is dropped


def test_ranking_metrics_by_hand() -> None:
    hit, ndcg = ranking_metrics([["x", "y", "t"], ["t"], ["x"]], ["t", "t", "t"], k=10)
    assert hit == pytest.approx(2 / 3)
    assert ndcg == pytest.approx((1 / math.log2(4) + 1.0 + 0.0) / 3)
    assert ranking_metrics([["x", "y", "t"]], ["t"], k=2) == (0.0, 0.0)


def test_evaluate_by_hand() -> None:
    # Popularity ranks a > b > c > d > e; tester's history is {d}, held out: c at rank 3.
    log = [ev(f"p{i}", "a", 1) for i in range(4)] + [ev(f"q{i}", "b", 1) for i in range(3)]
    log += [ev(f"r{i}", "c", 1) for i in range(2)] + [ev("tester", "d", 1), ev("tester", "c", 2)]
    train, test = leave_last_out(log)
    assert test == {"tester": "c"}
    report = evaluate(PopularityRecommender(), train, test, k=10, catalogue=["a", "b", "c", "d", "e"])
    assert (report.hit_rate, report.n_users, report.k) == (1.0, 1, 10)
    assert report.ndcg == pytest.approx(1 / math.log2(4))
    assert report.coverage == pytest.approx(4 / 5)  # a, b, c, e: d was seen
    assert evaluate(PopularityRecommender(), train, test, k=2).hit_rate == 0.0
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):  # it failed in NumPy's argmax
        evaluate(PopularityRecommender(), train, test, k=0)


def test_cold_start_split_hides_products() -> None:
    log = generate_shopping_log(CATALOGUE, n_users=200, seed=0)
    train, test, hidden = cold_start_split(log, fraction=0.2, seed=1)
    assert len(hidden) == 6
    assert not {e.product_id for e in train} & hidden
    assert test and set(test.values()) <= hidden


def test_hybrid_beats_popularity_on_a_generated_log() -> None:
    log = generate_shopping_log(CATALOGUE, n_users=600, seed=0)
    train, test = leave_last_out(log)
    vectors = content_vectors()
    popularity = evaluate(PopularityRecommender(), train, test)
    hybrid_rec = HybridRecommender(vectors)
    hybrid = evaluate(hybrid_rec, train, test)
    assert hybrid.hit_rate > popularity.hit_rate + 0.05
    assert hybrid.ndcg > popularity.ndcg + 0.03
    assert hybrid.coverage > popularity.coverage
    assert set(hybrid.details) == {"alpha", "beta"} and len(hybrid_rec.tuning_) == 77  # the whole grid
    # Cold products: popularity cannot reach them, the hybrid can.
    train, test, _ = cold_start_split(log, fraction=0.2, seed=0)
    assert evaluate(PopularityRecommender(), train, test, catalogue=vectors).hit_rate == 0.0
    assert evaluate(HybridRecommender(vectors), train, test, catalogue=vectors).hit_rate > 0.2


def test_recent_purchases_weigh_more_than_old_ones() -> None:
    """recency_half_life (in events): with 1, a user's older purchase counts half their latest, so what goes with
    the latest comes first (without the decay both tie and the product id decides)."""
    log = [ev("o1", "a", 1), ev("o1", "x", 2), ev("o2", "b", 1), ev("o2", "y", 2)]
    log += [ev("me", "b", 1), ev("me", "a", 2)]  # a is the latest
    rec = HybridRecommender(alpha=0.0, beta=0.0, recency_half_life=1).fit(log)
    assert [r.product_id for r in rec.recommend("me", k=2)] == ["x", "y"]
    log[-2:] = [ev("me", "a", 1), ev("me", "b", 2)]  # now b is
    rec = HybridRecommender(alpha=0.0, beta=0.0, recency_half_life=1).fit(log)
    assert [r.product_id for r in rec.recommend("me", k=2)] == ["y", "x"]


def test_with_no_popularity_weight_popularity_still_breaks_ties() -> None:
    """beta 0 (as tuning may choose): products the user's history says nothing about are ordered by popularity,
    not by product id."""
    log = [ev(f"v{i}", "zucchini", 1) for i in range(5)] + [ev("w", "apple", 1)]
    log += [ev("me", "solo", 1)]  # a product no one else bought: no co-occurrence with anything
    rec = HybridRecommender(alpha=0.0, beta=0.0).fit(log)
    assert [r.product_id for r in rec.recommend("me", k=2)] == ["zucchini", "apple"]
