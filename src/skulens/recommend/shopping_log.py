"""Shopping behaviour logs: the `Event` record, CSV read/write with validation, and a synthetic generator.

A log is a CSV with the columns ``user_id,product_id,event,timestamp`` (other columns are ignored).
``event`` is one of `EVENT_TYPES` unless the caller names others; ``timestamp`` is ISO-8601 (a value
without a zone is read as UTC) or unix seconds (years 1 to 9999: unix milliseconds are refused, not
guessed at). The file is UTF-8. Every problem is a :class:`ShoppingLogError` naming the file and line.

**The generator makes synthetic data.** No public behaviour log ships with skulens, so
:func:`generate_shopping_log` invents one from a catalogue's ``(product_id, coarse_label)`` pairs.
Its story, per user:

1. *Taste.* Coarse categories have a global popularity (Zipf over a seeded random order of the
   categories, exponent ``category_skew``). A user's taste is a Dirichlet draw over the categories
   whose mean is that popularity and whose concentration is ``taste_concentration`` per category:
   small values put most of a user's mass on a few categories.
2. *Products.* Within a category, products are chosen by Zipf popularity (exponent ``zipf``) over
   a seeded random order, so which product is popular has nothing to do with its name, photo or
   description. The only thing behaviour shares with content is the coarse category.
3. *Sessions over time.* A user has about ``mean_events`` interactions (negative binomial, so a
   long tail of heavy users), split into sessions of about ``session_length`` interactions spread
   over ``days`` days. Within a session the next interaction stays in the previous one's category
   with probability ``p_stay``, else a category is drawn from the user's taste.
4. *Noise and repeats.* With probability ``noise`` an interaction is a uniformly random product
   (taste and popularity ignored). With probability ``repeat`` a user who has bought something
   buys one of their earlier purchases again (favourites bought more often are likelier).
5. *Funnel.* Every interaction is a ``view``; with probability ``p_cart`` a ``cart`` follows a few
   seconds later, and a cart becomes a ``purchase`` with probability ``p_purchase``. Repeats go
   straight to ``purchase``.

What it does not model: cross-category complements (bread with butter), price, seasonality, taste
drift, or any within-category preference beyond popularity and a user's own repeats. A recommender
that wins here has learnt category taste, popularity and repeats, not real shoppers.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..data.encoding import not_utf8

try:
    import fcntl
except ImportError:  # Windows: one process at a time is up to the user
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "COLUMNS",
    "DEFAULT_EVENT_WEIGHTS",
    "EVENT_TYPES",
    "Event",
    "ShoppingLogError",
    "generate_shopping_log",
    "read_events",
    "remove_users",
    "write_events",
    "write_rows",
]

COLUMNS = ("user_id", "product_id", "event", "timestamp")
EVENT_TYPES = ("view", "cart", "purchase")
# A purchase says more about taste than a cart, and a cart more than a glance.
DEFAULT_EVENT_WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0}
_START = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()  # the synthetic logs begin here
MAX_TIMESTAMP = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()


class ShoppingLogError(ValueError):
    """A behaviour log that cannot be used as given; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Event:
    """One user action on one product; ``timestamp`` is unix seconds (UTC)."""

    user_id: str
    product_id: str
    event: str
    timestamp: float


# ---------------------------------------------------------------------------------------------
# CSV


def read_events(path: str | os.PathLike[str], *, event_types: Iterable[str] = EVENT_TYPES,
                allow_empty: bool = False) -> list[Event]:
    """Read and validate a behaviour log CSV (see the module docstring); events keep file order. A log with a
    header and no events is an error unless `allow_empty` (a log whose every user asked to be erased)."""
    source = Path(path)
    known = tuple(e.lower() for e in event_types)
    try:
        handle = source.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ShoppingLogError(f"{source}: cannot read behaviour log ({exc.strerror or exc})") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = [cell.strip().lower() for cell in next(reader, [])]
        except UnicodeDecodeError:
            raise ShoppingLogError(f"{source}: {not_utf8(source)}") from None
        if not any(header):
            raise ShoppingLogError(f"{source}: empty file (expected a header {','.join(COLUMNS)})")
        missing = [name for name in COLUMNS if name not in header]
        if missing:
            raise ShoppingLogError(f"{source}: line 1: missing column(s) {', '.join(missing)} "
                                   f"(found: {', '.join(header)})")
        where = [header.index(name) for name in COLUMNS]
        events: list[Event] = []
        try:
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                events.append(_parse_row(cells, where, known, f"{source}: line {reader.line_num}"))
        except csv.Error as exc:
            raise ShoppingLogError(f"{source}: line {reader.line_num}: bad CSV ({exc})") from exc
        except UnicodeDecodeError:
            raise ShoppingLogError(f"{source}: {not_utf8(source)}") from None
    if not events and not allow_empty:
        raise ShoppingLogError(f"{source}: no events after the header")
    return events


def remove_users(path: str | os.PathLike[str], drop: Callable[[str], bool]) -> int:
    """Rewrite the log without the events of users `drop` names (a user's erasure); returns how many went.

    The whole log is read and checked first (a bad row anywhere: ShoppingLogError, and the file is left as it
    is). Every other row keeps its cells, every column included (a shop's own price or store columns), as written:
    only the erased users' rows go, and the CSV quoting may change. The file is replaced atomically (a crash leaves
    the old or the new log, never half of one)."""
    target = Path(path)
    # Two erasures in two processes (the service and the CLI) must not each rewrite the log from what it read
    # before the other's rewrite: one at a time, under an advisory lock on a file beside the log (POSIX).
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        read_events(target, allow_empty=True)  # the whole log is valid, or nothing is rewritten
        raw = target.read_bytes()
        bom = raw.startswith(b"\xef\xbb\xbf")
        text = raw.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        user = [cell.strip().lower() for cell in rows[0]].index("user_id")
        keep = [rows[0]] + [r for r in rows[1:] if any(c.strip() for c in r) and not drop(r[user].strip())]
        gone = sum(1 for r in rows[1:] if any(c.strip() for c in r)) - (len(keep) - 1)
        if gone:
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                write_rows(tmp, keep, bom=bom, crlf=text.split("\n", 1)[0].endswith("\r"))
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    return gone


def write_rows(path: Path, rows: Sequence[Sequence[str]], *, bom: bool = False, crlf: bool = False) -> None:
    """CSV rows as they are (a log's own header and cells), UTF-8 with a BOM and CRLF line ends when asked."""
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        csv.writer(handle, lineterminator="\r\n" if crlf else "\n").writerows(rows)


def _parse_row(cells: list[str], where: list[int], known: tuple[str, ...], place: str) -> Event:
    if len(cells) <= max(where):
        raise ShoppingLogError(f"{place}: expected {max(where) + 1} columns, got {len(cells)}")
    user, product, kind, stamp = (cells[i].strip() for i in where)
    if not user or not product:
        raise ShoppingLogError(f"{place}: empty {'user_id' if not user else 'product_id'}")
    if kind.lower() not in known:
        raise ShoppingLogError(f"{place}: unknown event {kind!r} (known: {', '.join(known)})")
    return Event(user, product, kind.lower(), _parse_timestamp(stamp, place))


def _parse_timestamp(text: str, place: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = _parse_iso(text, place)
    if not math.isfinite(value):
        raise ShoppingLogError(f"{place}: bad timestamp {text!r} (expected ISO-8601 or unix seconds)")
    try:  # what write_events must be able to write back (and every datetime use of it)
        datetime.fromtimestamp(value, timezone.utc)
    except (OverflowError, OSError, ValueError):
        hint = "; unix milliseconds? divide by 1000" if abs(value) >= MAX_TIMESTAMP else ""
        raise ShoppingLogError(f"{place}: timestamp {text!r} is out of range (unix seconds, years 1 to 9999"
                               f"{hint})") from None
    return value


def _parse_iso(text: str, place: str) -> float:
    # Python 3.10's fromisoformat does not take a trailing "Z".
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ShoppingLogError(f"{place}: bad timestamp {text!r} (expected ISO-8601 or unix seconds)"
                               ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def write_events(path: str | os.PathLike[str], events: Iterable[Event]) -> Path:
    """Write ``events`` as a behaviour log CSV with ISO-8601 UTC timestamps; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for e in events:
            writer.writerow((e.user_id, e.product_id, e.event, _iso(e.timestamp)))
    return target


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# synthetic generator


@dataclass(frozen=True)
class _Catalogue:
    """Products grouped by category, with the cumulative sampling tables the generator draws from."""

    products: tuple[str, ...]
    category_of: np.ndarray  # product index -> category index
    members: tuple[np.ndarray, ...]  # category index -> product indices
    member_cdf: tuple[np.ndarray, ...]  # category index -> cumulative Zipf weights of its members
    category_mean: np.ndarray  # global category popularity, sums to 1


def generate_shopping_log(
    products: Sequence[tuple[str, str]],
    *,
    n_users: int = 2000,
    mean_events: float = 20.0,
    seed: int = 0,
    taste_concentration: float = 0.1,
    category_skew: float = 0.8,
    zipf: float = 1.0,
    p_stay: float = 0.6,
    noise: float = 0.1,
    repeat: float = 0.1,
    session_length: float = 5.0,
    p_cart: float = 0.3,
    p_purchase: float = 0.6,
    days: float = 90.0,
) -> list[Event]:
    """A **synthetic** behaviour log over ``(product_id, coarse_label)`` pairs; see the module docstring.

    Deterministic for a given ``seed``. Users are ``u00000``, ``u00001``, ...; events are sorted by
    user, then time; timestamps are whole seconds from 2024-01-01 UTC.
    """
    _check_generator_args(products, n_users, mean_events, noise, repeat, p_stay, p_cart, p_purchase)
    rng = np.random.default_rng(seed)
    cat = _build_catalogue(products, category_skew, zipf, rng)
    width = len(str(max(n_users - 1, 0)))
    events: list[Event] = []
    for u in range(n_users):
        user = f"u{u:0{max(width, 5)}d}"
        taste = _draw_taste(cat.category_mean, taste_concentration, rng)
        # Negative binomial (shape 2): mean ``mean_events``, with a long tail of heavy users.
        n = 1 + int(rng.negative_binomial(2, 2.0 / (mean_events + 1.0)))
        events.extend(_user_events(user, n, taste, cat, rng, p_stay=p_stay, noise=noise, repeat=repeat,
                                   session_length=session_length, p_cart=p_cart, p_purchase=p_purchase,
                                   days=days))
    return events


def _check_generator_args(products: Sequence[tuple[str, str]], n_users: int, mean_events: float,
                          *probabilities: float) -> None:
    if not products:
        raise ValueError("generate_shopping_log needs at least one (product_id, coarse_label) pair")
    ids = [p for p, _ in products]
    if len(set(ids)) != len(ids):
        raise ValueError("generate_shopping_log: product ids must be unique")
    if n_users < 1 or mean_events < 1:
        raise ValueError(f"need n_users >= 1 and mean_events >= 1, got {n_users} and {mean_events}")
    if not all(0.0 <= p <= 1.0 for p in probabilities):
        raise ValueError(f"probabilities must be in [0, 1], got {probabilities}")


def _build_catalogue(products: Sequence[tuple[str, str]], category_skew: float, zipf: float,
                     rng: np.random.Generator) -> _Catalogue:
    ids = tuple(p for p, _ in products)
    categories = sorted({c for _, c in products})
    cat_index = {c: i for i, c in enumerate(categories)}
    category_of = np.array([cat_index[c] for _, c in products])
    members, cdfs = [], []
    for c in range(len(categories)):
        idx = np.flatnonzero(category_of == c)
        # Popularity ranks are a random order: popular products are not the first listed or alike in content.
        ranks = rng.permutation(len(idx)) + 1
        weights = ranks.astype(float) ** -zipf
        members.append(idx)
        cdfs.append(np.cumsum(weights) / weights.sum())
    cat_ranks = rng.permutation(len(categories)) + 1
    mean = cat_ranks.astype(float) ** -category_skew
    return _Catalogue(ids, category_of, tuple(members), tuple(cdfs), mean / mean.sum())


def _draw_taste(mean: np.ndarray, concentration: float, rng: np.random.Generator) -> np.ndarray:
    taste = rng.dirichlet(np.maximum(concentration * len(mean) * mean, 1e-3))
    if not np.all(np.isfinite(taste)) or taste.sum() <= 0:  # tiny alphas can underflow to all zeros
        taste = np.eye(len(mean))[rng.choice(len(mean), p=mean)]
    return np.cumsum(taste) / taste.sum()


def _pick(cdf: np.ndarray, u: float) -> int:
    return min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)


def _user_events(user: str, n: int, taste_cdf: np.ndarray, cat: _Catalogue, rng: np.random.Generator, *,
                 p_stay: float, noise: float, repeat: float, session_length: float, p_cart: float,
                 p_purchase: float, days: float) -> list[Event]:
    n_sessions = max(1, round(n / session_length))
    starts = _START + np.sort(rng.uniform(0.0, days * 86400.0, size=n_sessions))
    session_of = np.sort(rng.integers(0, n_sessions, size=n))
    draws = rng.random((n, 6))
    bought: list[int] = []
    out: list[Event] = []
    previous_category, previous_session, clock = -1, -1, 0.0
    for i in range(n):
        s = int(session_of[i])
        if s != previous_session:
            previous_category, previous_session = -1, s
            clock = max(clock, float(starts[s]))  # a long session delays the next: time stays ordered
        r = draws[i]
        is_repeat = bool(bought) and noise <= r[0] < noise + repeat
        if r[0] < noise:
            item = int(r[1] * len(cat.products))
        elif is_repeat:
            item = bought[int(r[1] * len(bought))]  # multiplicity: favourites come back more often
        else:
            same = previous_category >= 0 and r[2] < p_stay
            c = previous_category if same else _pick(taste_cdf, r[3])
            item = int(cat.members[c][_pick(cat.member_cdf[c], r[1])])
        previous_category = int(cat.category_of[item])
        clock += 30.0 + 270.0 * r[4]  # 30 s to 5 min between interactions in a session
        product = cat.products[item]
        if is_repeat:
            out.append(Event(user, product, "purchase", float(round(clock))))
            bought.append(item)
            continue
        out.append(Event(user, product, "view", float(round(clock))))
        if r[5] < p_cart:
            clock += 10.0
            out.append(Event(user, product, "cart", float(round(clock))))
            if r[5] < p_cart * p_purchase:
                clock += 10.0
                out.append(Event(user, product, "purchase", float(round(clock))))
                bought.append(item)
    return out
