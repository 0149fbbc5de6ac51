"""The user's own view of what their device keeps: list it by category, export it, erase it.

Runs on the device with the standard library and numpy. Erasing removes the events, the policy's
decision log (it is derived from them) and any model update not yet uploaded, so nothing computed
from erased data can leave the device afterwards.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.client.decision_log import DecisionLog
from fedchurn.client.store import EventStore
from fedchurn.shared.catalogue import (
    CATALOGUE_VERSION,
    CATEGORIES,
    LEAVES_NOTHING_RAW,
    PURPOSES,
)
from fedchurn.shared.events import from_array

EXPORT_FORMAT = "fedchurn-user-export"
EXPORT_VERSION = 1
WHAT_LEAVES = (
    "Raw events never leave this device. During training rounds the device uploads one clipped, "
    "quantised and masked model update that the server can use only inside a sum over many devices; "
    "in evaluation rounds, a histogram of scores summed the same way. Scores, explanations and "
    "retention decisions stay on the device."
)
_PENDING_NAME = re.compile(r"^round_(\d{6,})\.bin$")


@dataclass(frozen=True)
class PendingUpdate:
    round_id: int
    path: Path
    size: int


class PendingUpdates:
    """Protected updates waiting for upload, one file per round: `round_NNNNNN.bin` in one folder.

    The Flower client writes an update here before it sends it and removes it once the server has
    acknowledged it; the user's erase discards whatever is still waiting.
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def _path(self, round_id: int) -> Path:
        if round_id < 0:
            raise ValueError("round_id must be >= 0")
        return self.dir / f"round_{round_id:06d}.bin"

    def put(self, round_id: int, blob: bytes) -> Path:
        """Write atomically (temporary file, then rename), replacing an earlier update of the round."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(round_id)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path

    def get(self, round_id: int) -> bytes | None:
        path = self._path(round_id)
        return path.read_bytes() if path.exists() else None

    def list(self) -> list[PendingUpdate]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _PENDING_NAME.match(p.name)
            if m and p.is_file():
                out.append(PendingUpdate(int(m.group(1)), p, p.stat().st_size))
        return sorted(out, key=lambda u: u.round_id)

    def discard(self, round_id: int) -> bool:
        path = self._path(round_id)
        if path.exists():
            path.unlink()
            return True
        return False

    def discard_all(self) -> int:
        """Remove every waiting update (and leftovers of interrupted writes); returns updates removed."""
        n = 0
        for u in self.list():
            u.path.unlink()
            n += 1
        if self.dir.is_dir():
            for p in self.dir.glob("round_*.tmp"):
                p.unlink()
        return n


def _local_date(ts: int, tz_min: int) -> str:
    return datetime.fromtimestamp(ts, tz=timezone(timedelta(minutes=tz_min))).date().isoformat()


def _local_time(ts: int, tz_min: int) -> str:
    return datetime.fromtimestamp(ts, tz=timezone(timedelta(minutes=tz_min))).isoformat()


def list_by_category(store: EventStore) -> list[dict[str, Any]]:
    """One row per catalogue category: how many events are stored and from which local dates."""
    events = store.events()
    counts = store.counts_by_category()
    out = []
    for c in CATEGORIES:
        sel = events[events["cat"] == c.number - 1]
        first = last = None
        if len(sel):
            i, j = int(np.argmin(sel["ts"])), int(np.argmax(sel["ts"]))
            first = _local_date(int(sel["ts"][i]), int(sel["tz_min"][i]))
            last = _local_date(int(sel["ts"][j]), int(sel["tz_min"][j]))
        out.append(
            {
                "category": c.id,
                "number": c.number,
                "name_en": c.name_en,
                "name_zh": c.name_zh,
                "events": counts[c.id],
                "first": first,
                "last": last,
                "retention_days": c.retention_days,
            }
        )
    return out


def export_json(
    store: EventStore, pending: PendingUpdates | None = None, exported_at: datetime | None = None
) -> dict[str, Any]:
    """Everything the device keeps about its user, as one JSON-ready document (data portability)."""
    events = from_array(store.events())
    by_cat: dict[str, list[dict[str, Any]]] = {c.id: [] for c in CATEGORIES}
    for e in events:
        by_cat[e.category].append(
            {
                "ts": e.ts,
                "local_time": _local_time(e.ts, e.tz_offset_min),
                "tz_offset_min": e.tz_offset_min,
                "action": e.action,
                "value": e.value,
            }
        )
    with DecisionLog(store.path) as log:
        decisions = log.decisions()
    when = exported_at or datetime.now(UTC)
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "catalogue_version": CATALOGUE_VERSION,
        "exported_at": when.isoformat(),
        "first_day_of_history": store.first_day(),
        "what_leaves_the_device": WHAT_LEAVES,
        "categories": [
            {
                "category": c.id,
                "number": c.number,
                "name_en": c.name_en,
                "name_zh": c.name_zh,
                "description": c.description,
                "purposes": [{"id": p, "description": PURPOSES[p]} for p in c.purposes],
                "legal_basis": c.legal_basis,
                "retention_days": c.retention_days,
                "leaves_device": c.leaves_device or LEAVES_NOTHING_RAW,
                "never_recorded": list(c.never_recorded),
                "events": by_cat[c.id],
            }
            for c in CATEGORIES
        ],
        "retention_decisions": decisions,
        "pending_updates": [
            {"round": u.round_id, "bytes": u.size} for u in (pending.list() if pending else [])
        ],
    }


def erase(store: EventStore, pending: PendingUpdates | str | Path | None = None) -> dict[str, int]:
    """The user's erase: events, the policy decision log, and every update not yet uploaded."""
    queue = pending if isinstance(pending, PendingUpdates) or pending is None else PendingUpdates(pending)
    discarded = queue.discard_all() if queue is not None else 0
    events = store.erase()
    with DecisionLog(store.path) as log:
        decisions = log.erase()
    return {"events": events, "decisions": decisions, "pending_updates": discarded}
