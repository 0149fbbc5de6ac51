"""Regenerate the golden vectors: `python tests/vectors/make_vectors.py`.

Run it only when the feature specification changes on purpose; the tests check the committed
files against the code to 1e-6, and a Kotlin/Swift port checks itself against the same files.
Each case runs the on-device path: log -> store (duplicates dropped) -> daily aggregates ->
features -> signals.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.client.aggregates import daily_aggregates, history_days
from fedchurn.client.features import extract_features
from fedchurn.client.signals import SIGNAL_NAMES, signals
from fedchurn.client.store import EventStore
from fedchurn.shared.catalogue import CATEGORIES
from fedchurn.shared.events import Event, from_array, to_array
from fedchurn.shared.feature_spec import CHANNELS, FEATURE_NAMES

HERE = Path(__file__).parent
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
H = 3600
DAY = 86_400


def ev(day: float, hour: float, cat: str, action: str, value: float = 1.0, tz: int = 0) -> Event:
    """An event at local `hour` of local `day` (days after 2026-01-01) on a clock at UTC+tz minutes."""
    return Event(int(T0 + day * DAY + hour * H - tz * 60), tz, cat, action, value)


def run_case(events: list[Event], today: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, EventStore(Path(tmp) / "device.sqlite") as store:
        store.append(events)
        stored = store.events()
        first = store.first_day()
    start, end = history_days(stored, first, today)
    daily = daily_aggregates(stored, start, end)
    days = np.arange(start, end + 1)
    feats = extract_features(daily, days, start)
    sig = signals(feats)
    return {
        "stored_events": len(stored),
        "first_day": start,
        "today": end,
        "daily": [[None if np.isnan(v) else float(v) for v in row] for row in daily],
        "features": [[float(v) for v in row] for row in feats],
        "signals": {k: [bool(x) for x in sig[k]] for k in SIGNAL_NAMES},
    }


def cases() -> dict[str, tuple[str, list[Event], int | None]]:
    rng = np.random.default_rng(20261123)
    out: dict[str, tuple[str, list[Event], int | None]] = {}
    out["first_day"] = (
        "A single session: the first day of history is also today.",
        [ev(0, 9, "sessions", "session", 120)],
        None,
    )
    out["empty_days"] = (
        "Sessions on days 0 and 5 only, then silence until day 12; empty days count as zero.",
        [ev(0, 9, "sessions", "session", 60), ev(5, 20, "sessions", "session", 600)],
        12,
    )
    out["time_zones"] = (
        "The same UTC instant lands on different local days: UTC+8 evening vs UTC-5 morning; "
        "a traveller changes offset mid-history; a 23:59 and a 00:00 local event.",
        [
            ev(0, 23.5, "sessions", "session", 30, tz=480),
            ev(1, 0, "sessions", "session", 30, tz=480),
            ev(1, 6, "reactions", "reaction", tz=-300),
            ev(2, 23.99, "sessions", "session", 10, tz=-300),
            ev(3, 0.01, "sessions", "session", 10, tz=330),
            ev(3, 3, "search", "search", tz=330),
        ],
        None,
    )
    dup = ev(1, 10, "purchases", "purchase", 19.99)
    out["duplicates"] = (
        "An SDK retry sends identical events twice: the store keeps one of each; a same-second event "
        "with another value is kept.",
        [
            ev(0, 8, "sessions", "session", 90),
            dup,
            dup,
            ev(1, 10, "purchases", "purchase", 5.0),
            ev(0, 8, "sessions", "session", 90),
        ],
        None,
    )
    out["out_of_order"] = (
        "Events arrive out of time order; the later device_tier of a day wins whatever the arrival order.",
        [
            ev(2, 12, "device_context", "device_tier", 1),
            ev(2, 18, "device_context", "device_tier", 3),
            ev(2, 9, "device_context", "device_tier", 2),
            ev(1, 9, "sessions", "session", 30),
            ev(0, 9, "sessions", "session", 30),
        ],
        None,
    )
    silence = [ev(d, 10 + (d % 3), "sessions", "session", 600) for d in range(20)]
    silence += [ev(d, 12, "content_consumption", "content_viewed", 40) for d in range(20)]
    silence += [ev(d, 13, "private_messages", "message_sent") for d in range(20) for _ in range(3)]
    silence += [ev(d, 10, "sessions", "session", 30) for d in range(20, 27)]
    out["silence"] = (
        "20 active days then a sharp drop: silence alert after 3 days below baseline, "
        "content below 40% of its mean for 5+ days.",
        silence,
        None,
    )
    commerce = [ev(0, 9, "device_context", "registration_channel", 1), ev(0, 9, "purchases", "purchase", 30)]
    commerce += [ev(d, 20, "commerce_browsing", "cart_abandon") for d in (3, 4, 5)]
    commerce += [ev(6, 20, "commerce_browsing", "checkout"), ev(7, 20, "commerce_browsing", "cart_abandon")]
    commerce += [ev(d, 21, "commerce_browsing", "product_view_repeat") for d in (3, 4, 6)]
    commerce += [
        ev(0, 8, "promotions", "discount_started"),
        ev(2, 8, "purchases", "purchase", 12.5),
        ev(3, 8, "promotions", "discount_ended"),
    ]
    commerce += [ev(d, 9, "sessions", "session", 100) for d in range(12)]
    out["commerce_promo"] = (
        "Abandoned carts reset by a checkout, repeated product views, a discount that "
        "ends with no purchase after it.",
        commerce,
        None,
    )
    social = [
        ev(0, 9, "social_graph", "friend_added", 20),
        ev(10, 9, "social_graph", "friend_lost", 2),
        ev(12, 9, "social_graph", "friend_lost", 2),
        ev(40, 9, "social_graph", "friend_added", 1),
    ]
    social += [ev(d, 19, "sessions", "session", 200) for d in range(0, 45, 2)]
    out["social"] = ("4 of 20 friends lost within 28 days (20% > 15%), then the window passes.", social, None)
    rich: list[Event] = []
    for d in range(45):
        for k, c in enumerate(CATEGORIES):
            n = int(rng.poisson(1.5 if d < 35 else 0.4))
            for _ in range(n):
                a = c.actions[int(rng.integers(len(c.actions)))]
                val = float(np.round(rng.uniform(0, 300), 2)) if a.value != "1" else 1.0
                if c.id == "device_context":
                    val = float(rng.integers(0, 3))
                rich.append(ev(d, float(np.round(rng.uniform(0, 24), 3)), c.id, a.name, val, tz=60 * (k % 3)))
    out["all_categories"] = (
        "45 days touching every category and action, with a decline in the last 10.",
        rich,
        None,
    )
    return out


def main() -> None:
    for name, (desc, events, today) in cases().items():
        arr = to_array(events)
        doc = {
            "name": name,
            "description": desc,
            "events": [
                {
                    "ts": e.ts,
                    "tz_offset_min": e.tz_offset_min,
                    "category": e.category,
                    "action": e.action,
                    "value": e.value,
                }
                for e in from_array(arr)
            ],
            "today": today,
            "channel_names": [c.name for c in CHANNELS],
            "feature_names": list(FEATURE_NAMES),
            "expected": run_case(events, today),
        }
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {name}.json")


if __name__ == "__main__":
    main()
