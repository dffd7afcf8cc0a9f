"""The service's data about people: behaviour events under pseudonyms, the recommender fitted on them, a
user's erasure on request, and the retention of kept uploads.

* Events come from the behaviour-log CSV (`--events`, read at start) and from `POST /v1/events` (kept in the
  database, `--db`). Both reach the recommender with pseudonymous user ids (`serve.privacy`); a recommendation
  request's user id is pseudonymised the same way before the lookup.
* The recommender is refitted from all events in the background when the database's events or the CSV log
  change (new events, an erasure by this or another worker or the CLI), at most every `recommend_refit_s`
  seconds; after an erasure this worker refits at once, so the erased user's history is gone from its answers
  when the call returns.
* `erase(user_id)` deletes the user's events from the database and from the CSV log, and the files of every
  photo they sent (`InventoryStore.erase_user`), with an audit line. A full or read-only disk or database is a
  StorageError that says what was not done.
* With `upload_retention_days`, kept uploads older than that are deleted at start and then hourly
  (`InventoryStore.purge_uploads`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..recommend.shopping_log import Event, ShoppingLogError, read_events, remove_users
from .inventory import Erasure, InventoryStore, storage_error
from .privacy import Pseudonymizer, pseudonymize_events

__all__ = ["ErasureRefused", "People", "UserErasure"]

logger = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0  # how often kept uploads are checked against the retention period
_NEVER_FITTED = ("never fitted",)  # a fitted version no events' version equals: the next check refits


class ErasureRefused(ValueError):
    """The behaviour log cannot be read, so the user's events in it cannot be erased; the message says what was
    erased (nothing, when the log was found unreadable before the database's part) and what to do."""


@dataclass(frozen=True)
class UserErasure:
    """What one erasure removed: events (database and CSV log), photos unlinked from the user, kept files deleted."""

    user: str  # the pseudonym (never the id that was asked for)
    events: int
    log_events: int
    photos: int
    files: int
    missing: int = 0  # files the inventory named that were in neither of its folders: not deleted (logged)


class People:
    """Events, recommender refits, erasure and retention for one service process (thread-safe)."""

    def __init__(self, *, store: InventoryStore | None, pseudonym: Pseudonymizer | None, events_csv: str | None,
                 fit: Callable[[list[Event]], Any] | None, refit_s: float = 60.0,
                 retention_days: float | None = None):
        self.store, self.pseudonym, self.events_csv = store, pseudonym, events_csv
        self._fit, self.refit_s, self.retention_days = fit, refit_s, retention_days
        self.recommender: Any = None
        self._fitted_version: tuple[Any, ...] | None = None
        self._last_check = self._last_retention = 0.0
        self._lock = threading.Lock()  # one refit or erasure at a time
        self._log_lock = threading.Lock()

    @property
    def records_events(self) -> bool:
        """Whether this service can keep events and erase users: a database and a pseudonym key."""
        return self.store is not None and self.pseudonym is not None

    def user_ref(self, user_id: str) -> str:
        """The id a user is known by here: their pseudonym when a key is configured, else the id as given
        (a CSV-only service without a key keeps the log's ids, as before)."""
        return self.pseudonym(user_id) if self.pseudonym is not None else user_id

    # -- events and the recommender ----------------------------------------------------------------------

    def all_events(self) -> list[Event]:
        """The CSV log's events (pseudonymised when a key is set), then the database's."""
        events: list[Event] = []
        if self.events_csv:
            with self._log_lock:  # empty: at start, a CSV-only service has nothing to recommend from; later, an
                # erasure took the last user out (the refit then drops the recommender, not the erasure's effect)
                events = read_events(self.events_csv,
                                     allow_empty=self.store is not None or self._fitted_version is not None)
            if self.pseudonym is not None:
                events = list(pseudonymize_events(events, self.pseudonym))
        if self.store is not None and self.pseudonym is not None:
            events += self.store.events()
        return events

    def refit(self) -> Any:
        """Fit the recommender on every event now (None when there are none yet, or nothing to fit with)."""
        if self._fit is None:
            return None
        with self._lock:
            version = self._version()
            events = self.all_events()
            self.recommender = self._fit(events) if events else None
            self._fitted_version = version
            return self.recommender

    def _version(self) -> tuple[Any, ...]:
        """What the events are now: the database's events version, and the CSV log's size and change time (an
        erasure by the CLI or another worker rewrites it; the database may not change at all)."""
        db = self.store.events_version() if self.records_events and self.store is not None else None
        log: tuple[int, int] | None = None
        if self.events_csv:
            try:
                st = os.stat(self.events_csv)
                log = (st.st_size, st.st_mtime_ns)
            except OSError:
                log = None
        return db, log

    def refit_if_changed(self) -> bool:
        """Refit when the database's events or the CSV log changed since the last fit (polled, at most every
        `refit_s`)."""
        now = time.monotonic()
        if (not self.records_events and not self.events_csv) or now - self._last_check < self.refit_s:
            return False
        self._last_check = now
        if self._version() == self._fitted_version:
            return False
        self.refit()
        return True

    def record(self, events: Sequence[Event]) -> int:
        """Keep events whose user ids are as the caller knows them; they are stored under pseudonyms."""
        assert self.store is not None and self.pseudonym is not None, "records_events is False"
        return self.store.record_events(list(pseudonymize_events(events, self.pseudonym)))

    # -- erasure and retention ---------------------------------------------------------------------------

    def erase(self, user_id: str, *, actor: str, missing_ok: bool = True) -> UserErasure:
        """Delete everything kept about one user, then refit so their history leaves the recommender too.

        A full or read-only disk or database (`storage_failure`) raises a StorageError that says what was not done:
        in the database nothing, or everything (`InventoryStore.erase_user` is all or nothing). The CSV log is
        rewritten (whole or not at all) after the database's erasure committed: when that fails, the database's
        part stays done, the recommender forgets it, and erasing the user again finishes the log's part. Without
        a store (a service run with --events only) the log is all there is to erase, and there is no audit log."""
        assert self.pseudonym is not None and (self.store is not None or self.events_csv), "nothing to erase from"
        ref = self.pseudonym(user_id)
        log = self.events_csv if self.events_csv and os.path.exists(self.events_csv) else None
        if self.events_csv and log is None:  # gone since the start: nothing of the user's is left in it
            logger.warning("erasure: the events log %s is gone; the user's events in it went with it", self.events_csv)
        if log:  # a log with a bad row cannot be rewritten: found before the database's part is done
            try:
                with self._log_lock:
                    read_events(self.events_csv, allow_empty=True)
            except ShoppingLogError as exc:
                raise ErasureRefused(f"{exc}; nothing was erased: mend the events log, then erase the user "
                                     "again") from None
        if self.store is None:
            done = Erasure(ref, 0, 0, 0)
        else:
            try:
                # the service's own folders are the store's: a file missing there went by hand, and is reported
                done = self.store.erase_user(ref, actor=actor, missing_ok=missing_ok)
            except Exception as exc:
                error = storage_error(exc, "the inventory cannot erase a user now", "nothing was erased")
                if error is None:
                    raise
                raise error from exc
        log_events = 0
        if log:
            try:
                with self._log_lock:  # the log holds raw ids (an old log) or pseudonyms (one pseudonymised)
                    log_events = remove_users(self.events_csv, lambda u: u == ref or self.pseudonym(u) == ref)
            except ShoppingLogError as exc:  # the log went bad since it was checked, above
                self._refit_after_erasure()
                raise ErasureRefused(f"{exc}; the user's {done.events} events and {done.files} files were erased "
                                     "from the inventory, but not their events in the log: mend the log, then erase "
                                     "the user again") from None
            except Exception as exc:
                error = storage_error(exc, "the events log cannot be rewritten now", (
                    f"the user's {done.events} events and {done.files} files were erased from the inventory, but not "
                    "their events in the log: erase the user again"))
                if error is None:
                    raise
                self._refit_after_erasure()
                raise error from exc
            try:  # the erase_user line was written in the database's transaction, before the log was rewritten
                if self.store is not None:
                    self.store.audit_note(actor, "erase_user_log", {"user": ref, "log_events": log_events,
                                                                    "log": str(self.events_csv)})
            except Exception as exc:
                error = storage_error(exc, "the audit line of the log's erasure cannot be written now", (
                    f"the user is erased (inventory and log: {log_events} events), without that line"))
                if error is None:
                    raise
                self._refit_after_erasure()
                raise error from exc
        self._refit_after_erasure()
        logger.info("erased user %s for %s: %d events, %d log events, %d photos, %d files", ref, actor, done.events,
                    log_events, done.photos, done.files)
        return UserErasure(ref, done.events, log_events, done.photos, done.files, done.missing)

    def _refit_after_erasure(self) -> None:
        """Refit so the erased user's history leaves the recommender; a refit that fails (the events log gone
        or broken since the start) drops the recommender instead: the erasure stands, and no answer is made
        from the history it erased; the background refit (`refit_if_changed`) tries again at its next tick."""
        try:
            self.refit()
        except Exception as exc:  # the erasure is done: what it answers is not undone here
            with self._lock:
                self.recommender = None
                self._fitted_version = _NEVER_FITTED  # the background refit tries again at its next tick
            logger.warning("recommender dropped after an erasure: the refit failed (%s); the background refit "
                           "tries again", exc, exc_info=True)

    def purge_if_due(self) -> int:
        """Delete kept uploads past the retention period (at most every hour); files deleted."""
        now = time.monotonic()
        if self.store is None or self.retention_days is None or (
                self._last_retention and now - self._last_retention < RETENTION_EVERY_S):
            return 0
        self._last_retention = now
        n = self.store.purge_uploads(self.retention_days)
        if n:
            logger.info("retention: deleted %d file(s): kept uploads older than %g days, and any no row names", n,
                        self.retention_days)
        return n

    def tick(self) -> None:
        """The background work, called every few seconds from the service loop (in a worker thread): the retention
        purge when due, then the recommender's refit when the events changed. Each runs whatever the other did,
        and a failure is logged, not raised (the service keeps answering): a read-only or full store
        (`storage_error`) in one line, as an operator's matter, anything else with its traceback."""
        work = ((self.purge_if_due, "the retention purge did not run", "it is tried again in an hour"),
                (self.refit_if_changed, "the recommender was not refitted", "the next tick tries again"))
        for step, doing, outcome in work:
            try:
                step()
            except Exception as exc:
                error = storage_error(exc, doing, outcome)
                if error is None:
                    logger.exception("%s (%s)", doing, outcome)
                else:
                    logger.error("inventory %s: %s", self.store.url if self.store is not None else "-", error)
