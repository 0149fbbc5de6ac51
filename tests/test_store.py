from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedchurn.client.store import EventStore
from fedchurn.shared.catalogue import BY_ID
from fedchurn.shared.events import Event, EventError, from_array

T = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400


def test_append_reads_back_in_time_order_and_ignores_exact_duplicates(tmp_path: Path) -> None:
    a = Event(T + 100, 60, "sessions", "session", 30)
    b = Event(T + 50, 60, "reactions", "reaction")
    with EventStore(tmp_path / "d.sqlite") as s:
        r = s.append([a, b, a])
        assert (r.inserted, r.duplicates) == (2, 1)
        assert s.append([a]).duplicates == 1
        assert from_array(s.events()) == [b, a]
        assert s.first_day() == (T + 50 + 3600) // DAY


def test_a_bad_event_writes_nothing(tmp_path: Path) -> None:
    with EventStore(tmp_path / "d.sqlite") as s:
        s.append([Event(T, 0, "sessions", "session", 1)])
        with pytest.raises(EventError, match="event 1"):
            s.append([Event(T + 1, 0, "sessions", "session", 1), Event(T + 2, 0, "sessions", "oops")])
        assert s.count() == 1


def test_rows_cannot_be_updated(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    with EventStore(path) as s:
        s.append([Event(T, 0, "sessions", "session", 1)])
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE events SET value = 99")
    db.close()


def test_prune_follows_each_category_retention(tmp_path: Path) -> None:
    now = T + 200 * DAY
    pm_days = BY_ID["private_messages"].retention_days  # 35
    ctx_days = BY_ID["device_context"].retention_days  # 365
    with EventStore(tmp_path / "d.sqlite") as s:
        s.append(
            [
                Event(now - (pm_days + 1) * DAY, 0, "private_messages", "message_sent"),
                Event(now - (pm_days - 1) * DAY, 0, "private_messages", "message_sent"),
                Event(now - 150 * DAY, 0, "device_context", "device_tier", 2),
                Event(now - 150 * DAY, 0, "sessions", "session", 10),
            ]
        )
        first = s.first_day()
        deleted = s.prune(now)
        assert (
            deleted["private_messages"] == 1 and deleted["sessions"] == 1 and deleted["device_context"] == 0
        )
        assert ctx_days > 150 and s.counts_by_category()["device_context"] == 1
        assert s.first_day() == first  # the account's start survives pruning


def test_erase_removes_everything(tmp_path: Path) -> None:
    with EventStore(tmp_path / "d.sqlite") as s:
        s.append([Event(T, 0, "sessions", "session", 1)])
        assert s.erase() == 1
        assert s.count() == 0 and s.first_day() is None
