"""The user's own view on the device: list by category, export as JSON, erase (with pending updates)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from fedchurn.client.decision_log import DecisionLog, PolicyEngine
from fedchurn.client.policy import PolicyInput
from fedchurn.client.store import EventStore
from fedchurn.client.user_view import PendingUpdates, erase, export_json, list_by_category
from fedchurn.shared.catalogue import CATEGORY_IDS
from fedchurn.shared.events import Event

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def _store(path: Path) -> EventStore:
    store = EventStore(path)
    store.append(
        [
            Event(T0 + 9 * 3600, 60, "sessions", "session", 300),
            Event(T0 + 86_400 + 23 * 3600 + 30 * 60, 60, "sessions", "session", 60),  # 00:30 local, Jan 3
            Event(T0 + 10 * 3600, 60, "purchases", "purchase", 12.5),
            Event(T0 + 11 * 3600, 60, "notifications", "recall_rejected"),
        ]
    )
    return store


def test_list_by_category_counts_every_catalogue_category(tmp_path: Path) -> None:
    with _store(tmp_path / "d.sqlite") as store:
        rows = list_by_category(store)
    assert [r["category"] for r in rows] == list(CATEGORY_IDS)
    by = {r["category"]: r for r in rows}
    assert by["sessions"]["events"] == 2 and by["purchases"]["events"] == 1
    assert by["sessions"]["first"] == "2026-01-01" and by["sessions"]["last"] == "2026-01-03"
    assert by["search"]["events"] == 0 and by["search"]["first"] is None
    assert by["private_messages"]["retention_days"] == 35


def test_export_holds_every_event_the_decisions_and_what_leaves(tmp_path: Path) -> None:
    pending = PendingUpdates(tmp_path / "pending")
    pending.put(3, b"\x01" * 40)
    with _store(tmp_path / "d.sqlite") as store:
        with DecisionLog(store.path) as log:
            PolicyEngine(log).decide(PolicyInput(20454, 0.9))
        doc = export_json(store, pending, exported_at=datetime(2026, 1, 5, tzinfo=UTC))
    text = json.dumps(doc)  # JSON-ready
    assert json.loads(text) == doc
    assert doc["format"] == "fedchurn-user-export" and doc["exported_at"].startswith("2026-01-05")
    cats = {c["category"]: c for c in doc["categories"]}
    assert len(cats) == 17 and sum(len(c["events"]) for c in cats.values()) == 4
    assert cats["purchases"]["events"][0]["value"] == 12.5
    assert cats["sessions"]["events"][0]["local_time"] == "2026-01-01T10:00:00+01:00"
    assert cats["sessions"]["purposes"] and "never_recorded" in cats["sessions"]
    assert doc["retention_decisions"][0]["action"] == "recall"
    assert doc["pending_updates"] == [{"round": 3, "bytes": 40}]
    assert "never leave" in doc["what_leaves_the_device"]


def test_erase_removes_events_decisions_and_pending_updates(tmp_path: Path) -> None:
    pending = PendingUpdates(tmp_path / "pending")
    pending.put(1, b"a")
    pending.put(2, b"bb")
    (tmp_path / "pending" / "round_000009.tmp").write_bytes(b"half")  # an interrupted write
    with _store(tmp_path / "d.sqlite") as store:
        with DecisionLog(store.path) as log:
            PolicyEngine(log).decide(PolicyInput(20454, 0.9))
        res = erase(store, tmp_path / "pending")
        assert res == {"events": 4, "decisions": 1, "pending_updates": 2}
        assert store.count() == 0 and store.first_day() is None
        assert all(r["events"] == 0 for r in list_by_category(store))
        with DecisionLog(store.path) as log:
            assert log.count() == 0
    assert pending.list() == [] and not list((tmp_path / "pending").iterdir())


def test_pending_updates_queue(tmp_path: Path) -> None:
    q = PendingUpdates(tmp_path / "q")
    assert q.list() == [] and q.discard_all() == 0
    q.put(7, b"old")
    q.put(7, b"new")
    q.put(12, b"x")
    assert [(u.round_id, u.size) for u in q.list()] == [(7, 3), (12, 1)]
    assert q.get(7) == b"new" and q.get(8) is None
    assert q.discard(7) and not q.discard(7)
    assert [u.round_id for u in q.list()] == [12]
