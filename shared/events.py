"""The event schema: what a device records, checked against the catalogue.

An event is (timestamp, UTC offset, category, action, value). Days are the device's local
calendar days, so a late-evening session in UTC+8 lands on the user's own day.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fedchurn.shared.catalogue import BY_ID, CATEGORIES, CATEGORY_IDS

__all__ = [
    "EVENT_DTYPE",
    "MAX_TIMESTAMP",
    "MAX_TZ_OFFSET_MIN",
    "MAX_VALUE",
    "MIN_TIMESTAMP",
    "SECONDS_PER_DAY",
    "Event",
    "EventError",
    "action_code",
    "check_timestamp",
    "check_tz_offset",
    "check_value",
    "from_array",
    "local_day",
    "local_hour",
    "to_array",
    "weekday",
]

SECONDS_PER_DAY = 86_400
MIN_TIMESTAMP = 0  # 1970-01-01T00:00:00Z: public logs such as CDNOW (1997) are older than 2000
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01T00:00:00Z
MAX_TZ_OFFSET_MIN = 14 * 60  # UTC-14:00 .. UTC+14:00
MAX_VALUE = 1e9

# One row per event; `cat` and `action` are 0-based indices into the catalogue.
EVENT_DTYPE = np.dtype([("ts", "<i8"), ("tz_min", "<i2"), ("cat", "u1"), ("action", "u1"), ("value", "<f8")])


class EventError(ValueError):
    """An event breaks the schema; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Event:
    ts: int
    tz_offset_min: int
    category: str
    action: str
    value: float = 1.0

    def codes(self) -> tuple[int, int]:
        """Validate and return (category index, action index)."""
        check_timestamp(self.ts)
        check_tz_offset(self.tz_offset_min)
        cat_idx, act_idx = action_code(self.category, self.action)
        check_value(self.value)
        return cat_idx, act_idx


def check_timestamp(ts: int) -> None:
    if isinstance(ts, bool) or not isinstance(ts, int | np.integer):
        raise EventError("timestamp", f"expected whole seconds since 1970-01-01 UTC, got {ts!r}")
    if not MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
        raise EventError("timestamp", f"{ts} is outside 1970-01-01..2100-01-01")


def check_tz_offset(tz_min: int) -> None:
    if isinstance(tz_min, bool) or not isinstance(tz_min, int | np.integer):
        raise EventError("tz_offset", f"expected whole minutes, got {tz_min!r}")
    if abs(int(tz_min)) > MAX_TZ_OFFSET_MIN:
        raise EventError("tz_offset", f"{tz_min} min is outside UTC-14:00..UTC+14:00")


def check_value(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise EventError("value", f"expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise EventError("value", f"{value!r} is not a finite number")
    if not 0.0 <= v <= MAX_VALUE:
        raise EventError("value", f"{v} is outside 0..{MAX_VALUE:g}")


def action_code(category: str, action: str) -> tuple[int, int]:
    cat = BY_ID.get(category)
    if cat is None:
        raise EventError("category", f"unknown category {category!r}; known: {', '.join(CATEGORY_IDS)}")
    names = cat.action_names()
    if action not in names:
        raise EventError("action", f"{action!r} is not an action of {category!r}; known: {', '.join(names)}")
    return cat.number - 1, names.index(action)


def to_array(events: Iterable[Event]) -> np.ndarray:
    """Validate events and pack them into an `EVENT_DTYPE` array, in the order given."""
    rows = []
    for i, e in enumerate(events):
        try:
            cat_idx, act_idx = e.codes()
        except EventError as err:
            raise EventError(err.field, f"event {i}: {err}") from None
        rows.append((e.ts, e.tz_offset_min, cat_idx, act_idx, float(e.value)))
    return np.array(rows, dtype=EVENT_DTYPE)


def from_array(arr: np.ndarray) -> list[Event]:
    out = []
    for row in arr:
        cat = CATEGORIES[int(row["cat"])]
        out.append(
            Event(
                int(row["ts"]),
                int(row["tz_min"]),
                cat.id,
                cat.actions[int(row["action"])].name,
                float(row["value"]),
            )
        )
    return out


def local_day(ts: np.ndarray | int, tz_min: np.ndarray | int) -> np.ndarray:
    """Local calendar day number (days since 1970-01-01 in the device's own clock)."""
    return (np.asarray(ts, dtype=np.int64) + np.asarray(tz_min, dtype=np.int64) * 60) // SECONDS_PER_DAY


def local_hour(ts: np.ndarray | int, tz_min: np.ndarray | int) -> np.ndarray:
    local = np.asarray(ts, dtype=np.int64) + np.asarray(tz_min, dtype=np.int64) * 60
    return (local % SECONDS_PER_DAY) // 3600


def weekday(day: np.ndarray | int) -> np.ndarray:
    """Monday = 0 … Sunday = 6 (1970-01-01 was a Thursday)."""
    return (np.asarray(day, dtype=np.int64) + 3) % 7
