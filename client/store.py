"""The per-device event store: one SQLite file per device, append-only, pruned by retention.

A phone keeps exactly this file. Rows are never updated (a trigger refuses it); they leave only
through retention pruning or the user's own erase. An event identical in all five fields to a
stored one is ignored, so an SDK that retries a send does not double-count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from fedchurn.shared.catalogue import BY_ID, CATALOGUE_VERSION, CATEGORIES
from fedchurn.shared.events import EVENT_DTYPE, SECONDS_PER_DAY, Event, EventError, from_array, to_array

STORE_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       INTEGER NOT NULL,
    tz_min   INTEGER NOT NULL,
    category TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    value    REAL    NOT NULL,
    UNIQUE (ts, tz_min, category, action, value)
);
CREATE INDEX IF NOT EXISTS events_by_category_ts ON events (category, ts);
CREATE TRIGGER IF NOT EXISTS events_append_only BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class AppendResult:
    inserted: int
    duplicates: int


class EventStore:
    """Open (creating if needed) the store at `path`; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        version = self._meta("schema_version")
        if version is None:
            self._set_meta("schema_version", str(STORE_SCHEMA_VERSION))
            self._set_meta("catalogue_version", CATALOGUE_VERSION)
        elif int(version) != STORE_SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: store schema {version}, this code reads {STORE_SCHEMA_VERSION}")

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def append(self, events: Iterable[Event] | np.ndarray) -> AppendResult:
        """Validate every event, then write them all in one transaction (or none)."""
        arr = events if isinstance(events, np.ndarray) else to_array(events)
        if arr.dtype != EVENT_DTYPE:
            raise EventError("events", f"expected dtype {EVENT_DTYPE}, got {arr.dtype}")
        rows = [(e.ts, e.tz_offset_min, e.category, e.action, e.value) for e in from_array(arr)]
        for i, (ts, tz, cat, act, val) in enumerate(rows):
            try:
                Event(ts, tz, cat, act, val).codes()
            except EventError as err:
                raise EventError(err.field, f"event {i}: {err}") from None
        before = self.count()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR IGNORE INTO events (ts, tz_min, category, action, value) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            if rows:
                first = min(_day(ts, tz) for ts, tz, *_ in rows)
                known = self._meta("first_day")
                if known is None or first < int(known):
                    self._set_meta("first_day", str(first))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        inserted = self.count() - before
        return AppendResult(inserted=inserted, duplicates=len(rows) - inserted)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def first_day(self) -> int | None:
        """First local day of the device's history; survives pruning (it dates the account)."""
        v = self._meta("first_day")
        return None if v is None else int(v)

    def events(self) -> np.ndarray:
        """All stored events as an `EVENT_DTYPE` array, ordered by time then arrival."""
        cur = self._db.execute("SELECT ts, tz_min, category, action, value FROM events ORDER BY ts, seq")
        out = []
        for ts, tz, cat, act, val in cur:
            c = BY_ID[cat]
            out.append((ts, tz, c.number - 1, c.action_names().index(act), val))
        return np.array(out, dtype=EVENT_DTYPE)

    def counts_by_category(self) -> dict[str, int]:
        got = dict(self._db.execute("SELECT category, COUNT(*) FROM events GROUP BY category").fetchall())
        return {c.id: int(got.get(c.id, 0)) for c in CATEGORIES}

    def prune(self, now_ts: int) -> dict[str, int]:
        """Delete events older than their category's retention; returns rows deleted per category."""
        deleted: dict[str, int] = {}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for c in CATEGORIES:
                cutoff = now_ts - c.retention_days * SECONDS_PER_DAY
                cur = self._db.execute("DELETE FROM events WHERE category = ? AND ts < ?", (c.id, cutoff))
                deleted[c.id] = cur.rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return deleted

    def erase(self) -> int:
        """The user's right to erasure: delete every event and the history start."""
        self._db.execute("BEGIN IMMEDIATE")
        n = self._db.execute("DELETE FROM events").rowcount
        self._db.execute("DELETE FROM meta WHERE key = 'first_day'")
        self._db.execute("COMMIT")
        return int(n)


def _day(ts: int, tz_min: int) -> int:
    return (ts + tz_min * 60) // SECONDS_PER_DAY
