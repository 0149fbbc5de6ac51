from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedchurn.shared.catalogue import CATEGORIES
from fedchurn.shared.events import (
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    Event,
    EventError,
    from_array,
    local_day,
    local_hour,
    to_array,
    weekday,
)

pairs = [(c.id, a.name) for c in CATEGORIES for a in c.actions]
events_st = st.builds(
    Event,
    ts=st.integers(MIN_TIMESTAMP, MAX_TIMESTAMP - 1),
    tz_offset_min=st.integers(-840, 840),
    category=st.just("x"),
    action=st.just("x"),
    value=st.floats(0, 1e9, allow_nan=False),
).flatmap(lambda e: st.sampled_from(pairs).map(lambda p: Event(e.ts, e.tz_offset_min, p[0], p[1], e.value)))


@given(st.lists(events_st, max_size=30))
def test_array_round_trip(events: list[Event]) -> None:
    assert from_array(to_array(events)) == events


@given(st.integers(MIN_TIMESTAMP, MAX_TIMESTAMP), st.integers(-840, 840))
def test_local_day_and_hour_follow_the_device_clock(ts: int, tz: int) -> None:
    day, hour = int(local_day(ts, tz)), int(local_hour(ts, tz))
    local = ts + tz * 60
    assert day * 86400 <= local < (day + 1) * 86400
    assert hour == (local - day * 86400) // 3600


def test_weekday_of_known_dates() -> None:
    assert int(weekday(0)) == 3  # 1970-01-01, a Thursday
    monday = (date(2025, 11, 24) - date(1970, 1, 1)).days
    assert [int(weekday(monday + k)) for k in range(7)] == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("event", "field", "text"),
    [
        (Event(1_700_000_000, 0, "emails", "sent"), "category", "unknown category"),
        (Event(1_700_000_000, 0, "sessions", "purchase"), "action", "not an action of 'sessions'"),
        (Event(1_700_000_000, 0, "sessions", "session", float("nan")), "value", "not a finite"),
        (Event(1_700_000_000, 0, "sessions", "session", -1.0), "value", "outside"),
        (Event(-12, 0, "sessions", "session"), "timestamp", "outside"),
        (Event(1_700_000_000, 900, "sessions", "session"), "tz_offset", "UTC-14"),
    ],
)
def test_invalid_events_name_the_field(event: Event, field: str, text: str) -> None:
    with pytest.raises(EventError, match=text) as info:
        event.codes()
    assert info.value.field == field


def test_to_array_reports_the_event_index() -> None:
    good = Event(1_700_000_000, 0, "sessions", "session", 5)
    with pytest.raises(EventError, match="event 2"):
        to_array([good, good, Event(1_700_000_000, 0, "sessions", "nope")])
    assert to_array([]).shape == (0,)
    assert np.array_equal(to_array([good])["cat"], [0])
