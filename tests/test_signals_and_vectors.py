from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedchurn.client.aggregates import daily_aggregates, history_days
from fedchurn.client.features import extract_features
from fedchurn.client.signals import SIGNAL_NAMES, SignalThresholds, signals
from fedchurn.client.store import EventStore
from fedchurn.shared.events import Event
from fedchurn.shared.feature_spec import CHANNELS, FEATURE_INDEX, FEATURE_NAMES

VECTORS = sorted((Path(__file__).parent / "vectors").glob("*.json"))


def test_there_are_golden_vectors_for_each_edge_case() -> None:
    names = {p.stem for p in VECTORS}
    assert {"first_day", "empty_days", "time_zones", "duplicates", "out_of_order", "all_categories"} <= names


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_golden_vector(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert doc["feature_names"] == list(FEATURE_NAMES)
    assert doc["channel_names"] == [c.name for c in CHANNELS]
    events = [
        Event(e["ts"], e["tz_offset_min"], e["category"], e["action"], e["value"]) for e in doc["events"]
    ]
    exp = doc["expected"]
    with tempfile.TemporaryDirectory() as tmp, EventStore(Path(tmp) / "d.sqlite") as store:
        store.append(events)
        stored = store.events()
        first = store.first_day()
    assert len(stored) == exp["stored_events"]
    start, end = history_days(stored, first, doc["today"])
    assert (start, end) == (exp["first_day"], exp["today"])
    daily = daily_aggregates(stored, start, end)
    want_daily = np.array(
        [[np.nan if v is None else v for v in row] for row in exp["daily"]], dtype=np.float64
    )
    np.testing.assert_allclose(daily, want_daily, rtol=0, atol=1e-6, equal_nan=True)
    feats = extract_features(daily, np.arange(start, end + 1), start)
    np.testing.assert_allclose(feats, np.array(exp["features"]), rtol=0, atol=1e-6)
    sig = signals(feats)
    for name in SIGNAL_NAMES:
        assert [bool(x) for x in sig[name]] == exp["signals"][name], name


def _row(**values: float) -> np.ndarray:
    f = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)
    f[0, FEATURE_INDEX["purchases.recency_days"]] = 90
    f[0, FEATURE_INDEX["promo.days_since_discount_end"]] = 90
    for k, v in values.items():
        f[0, FEATURE_INDEX[k.replace("__", ".")]] = v
    return f


def test_silence_alert_needs_three_days_and_five_during_a_promotion() -> None:
    assert not signals(_row(activity__days_below_baseline=2))["silence_alert"][0]
    assert signals(_row(activity__days_below_baseline=3))["silence_alert"][0]
    promo = _row(activity__days_below_baseline=4, promo__discount_active=1)
    assert not signals(promo)["silence_alert"][0]
    assert signals(promo, SignalThresholds(silence_days_during_promotion=4))["silence_alert"][0]


def test_segment_critical_points() -> None:
    s = signals(
        _row(
            promo__days_since_discount_end=3,
            social__friends_lost_share_28d=0.16,
            content__days_below_40pct=5,
            commerce__abandoned_cart_streak=3,
        )
    )
    assert s["price_discount_ended"][0] and s["social_friends_leaving"][0]
    assert s["content_below_mean"][0] and s["commerce_abandoned_carts"][0]
    s = signals(
        _row(
            promo__days_since_discount_end=2,
            social__friends_lost_share_28d=0.15,
            content__days_below_40pct=4,
            commerce__abandoned_cart_streak=2,
        )
    )
    assert not any(v[0] for v in s.values())
    bought = _row(promo__days_since_discount_end=4, purchases__recency_days=1)
    assert not signals(bought)["price_discount_ended"][0]
