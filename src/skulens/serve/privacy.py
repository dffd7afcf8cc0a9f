"""Data about people: pseudonymous user ids, and the key they are made with.

A shopper's or seller's id never reaches the database or the recommender as given: it is replaced by a
*pseudonym*, ``ps_`` + the first 32 hex digits of HMAC-SHA256(key, id). The same id always gives the same
pseudonym (so a user's events still belong together and `DELETE /v1/users/{id}` finds them), but without the
key nobody can tell whose it is, nor test a guessed id against it: the key lives outside the data (an
environment variable or a file elsewhere), so a copy of the database or the logs alone identifies nobody.

Losing the key makes every stored pseudonym unreachable (a user can no longer be found, to recommend to or to
erase); rotating it is the same as losing it for the old records. Keep it as carefully as the API keys.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import ConfigError
from ..recommend.shopping_log import Event

__all__ = ["KEY_ENV", "Pseudonymizer", "UserIdsOutOfAccessLog", "is_pseudonym", "load_pseudonymizer",
           "pseudonymize_events"]

KEY_ENV = "SKULENS_PSEUDONYM_KEY"
_PREFIX = "ps_"
_PSEUDONYM = re.compile(r"ps_[0-9a-f]{32}")
_MIN_KEY_BYTES = 16  # 128 bits: an HMAC key shorter than this could be guessed


def is_pseudonym(value: str) -> bool:
    """Whether `value` has the form of a pseudonym (what the store accepts as a user reference)."""
    return _PSEUDONYM.fullmatch(value) is not None


@dataclass(frozen=True)
class Pseudonymizer:
    """user id -> pseudonym with a secret key. A value that already is a pseudonym is returned unchanged, so
    a log pseudonymised once can be read again without hashing its ids twice."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < _MIN_KEY_BYTES:
            raise ConfigError(f"the pseudonym key must be at least {_MIN_KEY_BYTES} bytes, got {len(self.key)}")

    def __call__(self, user_id: str) -> str:
        if is_pseudonym(user_id):
            return user_id
        # surrogatepass: an id from a command line that is not UTF-8 (its bytes as lone surrogates) is an id
        digest = hmac.new(self.key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return _PREFIX + digest[:32]  # 128 bits: no two users of any shop collide


class UserIdsOutOfAccessLog(logging.Filter):
    """Takes the user id out of an access-log line's path (uvicorn's `uvicorn.access` records): `GET
    /v1/users/alice@example.com/recommendations` is logged as `/v1/users/~/recommendations`. Without it the log
    held every asked id, beside the erasure's pseudonym line: a table from ids to pseudonyms, and the ids of
    erased users."""

    # the id is the whole rest of the path (`{user_id:path}`: "shop/42" is one id), but a recommendations route's
    # own last segment; the query (k, seed products) stays
    _PATH = re.compile(r"^(/v1/users/)[^?#]+?(/recommendations)?(?=[?#]|$)")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], self._PATH.sub(lambda m: m[1] + "~" + (m[2] or ""), args[2]), *args[3:])
        return True


def pseudonymize_events(events: Iterable[Event], pseudonym: Pseudonymizer) -> Iterator[Event]:
    """The events with every user id replaced by its pseudonym."""
    for e in events:
        yield replace(e, user_id=pseudonym(e.user_id))


def load_pseudonymizer(key_file: str | os.PathLike[str] | None = None, *,
                       data_dirs: Iterable[str | os.PathLike[str] | None] = (),
                       data_files: Iterable[str | os.PathLike[str] | None] = ()) -> Pseudonymizer | None:
    """The pseudonymizer from `key_file` (its bytes, surrounding whitespace stripped), else from
    $SKULENS_PSEUDONYM_KEY; None when neither is set.

    data_dirs: folders the service keeps data in; a key file inside one of them is refused (a copy of the data
    would carry the key that undoes its pseudonyms). data_files: the database file, the behaviour log: a key
    file beside one of them, in the same folder, is refused too."""
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise ConfigError(f"pseudonym key file not found: {path}")
        resolved = path.resolve()
        for d in data_dirs:
            if d is not None and resolved.is_relative_to(Path(d).resolve()):
                raise ConfigError(f"pseudonym key file {path} lies inside the data folder {d}: keep the key "
                                  "outside the data it protects")
        for f in data_files:
            if f is not None and resolved.parent == Path(f).resolve().parent:
                raise ConfigError(f"pseudonym key file {path} lies beside {f}: keep the key outside the folder "
                                  "of the data it protects (a copy of that folder would carry it)")
        return Pseudonymizer(path.read_bytes().strip())
    value = os.environ.get(KEY_ENV, "").strip()
    return Pseudonymizer(value.encode("utf-8", "surrogatepass")) if value else None
