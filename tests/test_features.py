from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedchurn.client.aggregates import daily_aggregates, daily_aggregates_batch
from fedchurn.client.features import extract_features
from fedchurn.client.pipeline import device_features
from fedchurn.shared.catalogue import CATEGORIES
from fedchurn.shared.events import EVENT_DTYPE, Event, to_array
from fedchurn.shared.feature_spec import BASE_FEATURES, CHANNEL_INDEX, FEATURE_INDEX, N_FEATURES

T0 = 1_767_225_600  # 2026-01-01 (a Thursday), day 20454
D0 = T0 // 86_400
F = FEATURE_INDEX


def at(day: int, hour: float, cat: str, action: str, value: float = 1.0, tz: int = 0) -> Event:
    return Event(int(T0 + day * 86_400 + hour * 3600 - tz * 60), tz, cat, action, value)


def feats(events: list[Event], today: int | None = None) -> np.ndarray:
    return device_features(to_array(events), today=None if today is None else D0 + today).features


def test_127_base_features_then_the_extended_block_one_vector_per_day() -> None:
    ev = to_array([at(0, 9, "sessions", "session", 60), at(9, 9, "sessions", "session", 60)])
    res = device_features(ev)
    assert res.features.shape == (10, N_FEATURES) and BASE_FEATURES == 127 and N_FEATURES > 127
    assert res.features.dtype == np.float32
    base = extract_features(res.daily, res.days, res.first_day, BASE_FEATURES)
    np.testing.assert_array_equal(base, res.features[:, :BASE_FEATURES])  # the base model reads a prefix


def test_history_rhythm_and_money_by_hand() -> None:
    """Purchases on days 0, 10, 30 (amounts 5, 20, 40), a refund of 7 on day 31; today = day 50."""
    ev = [
        at(0, 12, "purchases", "purchase", 5),
        at(10, 12, "purchases", "purchase", 20),
        at(30, 12, "purchases", "purchase", 40),
        at(31, 12, "purchases", "refund", 7),
    ]
    f = feats(ev, today=50)[-1]
    gaps = [10, 20, 1]  # active days 0, 10, 30, 31 (a refund is a behaviour event too)
    mean = sum(gaps) / 3
    std = math.sqrt(sum((g - mean) ** 2 for g in gaps) / 3)
    assert math.isclose(f[F["history.recency_days"]], math.log1p(19), rel_tol=1e-6)
    assert math.isclose(f[F["history.active_days"]], math.log1p(4), rel_tol=1e-6)
    assert math.isclose(f[F["history.gap_mean_days"]], math.log1p(mean), rel_tol=1e-6)
    assert math.isclose(f[F["history.gap_std_days"]], math.log1p(std), rel_tol=1e-5)
    assert math.isclose(f[F["history.gap_last_days"]], math.log1p(1), rel_tol=1e-6)
    assert math.isclose(f[F["history.overdue"]], 19 / mean, rel_tol=1e-6)
    assert math.isclose(f[F["rfm.monetary_total"]], math.log1p(65), rel_tol=1e-6)
    assert math.isclose(f[F["rfm.monetary_90d"]], math.log1p(65), rel_tol=1e-6)
    assert math.isclose(f[F["rfm.refunds_365d"]], math.log1p(7), rel_tol=1e-6)
    assert math.isclose(f[F["purchases.count_90d"]], math.log1p(4), rel_tol=1e-6)
    assert math.isclose(f[F["rfm.monetary_trend"]], math.log(66.0), rel_tol=1e-6)
    # Before the second active day there is no gap: rhythm features are 0, recency is the age.
    first = feats(ev, today=5)[-1]
    assert first[F["history.gap_mean_days"]] == 0 and first[F["history.overdue"]] == 0
    assert math.isclose(first[F["history.recency_days"]], math.log1p(5), rel_tol=1e-6)


def test_windows_trend_recency_by_hand() -> None:
    ev = [at(d, 10, "sessions", "session", 600) for d in range(28) for _ in range(2 if d >= 21 else 1)]
    f = feats(ev)[-1]
    assert math.isclose(f[F["sessions.count_1d"]], math.log1p(2), rel_tol=1e-6)
    assert math.isclose(f[F["sessions.count_7d"]], math.log1p(14), rel_tol=1e-6)
    assert math.isclose(f[F["sessions.count_28d"]], math.log1p(35), rel_tol=1e-6)
    assert math.isclose(f[F["sessions.trend"]], math.log(15 / (21 * 7 / 21 + 1)), rel_tol=1e-6)
    assert f[F["sessions.recency_days"]] == 0 and f[F["purchases.recency_days"]] == 90
    assert f[F["active_days_7d"]] == 7 and f[F["active_days_28d"]] == 28
    assert math.isclose(f[F["session_minutes_7d"]], math.log1p(14 * 10), rel_tol=1e-6)


def test_activity_index_baseline_and_silence_streak() -> None:
    ev = [at(d, 10, "sessions", "session", 600) for d in range(10)]
    f = feats(ev, today=13)
    raw = 1.0 * math.log1p(1) + 0.5 * math.log1p(10)
    idx = 100 * raw / (raw + 4)
    assert math.isclose(f[9, F["activity.index"]], idx, rel_tol=1e-5)
    assert math.isclose(f[9, F["activity.baseline"]], idx, rel_tol=1e-5)
    assert list(f[10:, F["activity.days_below_baseline"]]) == [1, 2, 3, 4]
    assert f[0, F["activity.ratio"]] == 1.0  # first day: baseline is today's own index


def test_local_days_follow_the_device_clock() -> None:
    # 23:30 local in UTC+8 is 15:30Z the same day; 00:30 local the next day is still the previous UTC day.
    ev = [at(0, 23.5, "sessions", "session", 60, tz=480), at(1, 0.5, "sessions", "session", 60, tz=480)]
    f = feats(ev)
    assert f.shape[0] == 2 and list(np.expm1(f[:, F["sessions.count_1d"]]).round()) == [1, 1]
    assert f[1, F["habit.night_share_28d"]] == np.float32(0.5)


def test_static_context_is_carried_forward() -> None:
    ev = [
        at(0, 8, "device_context", "registration_channel", 2),
        at(0, 8, "device_context", "device_tier", 1),
        at(3, 8, "device_context", "device_tier", 3),
        at(5, 8, "sessions", "session", 1),
    ]
    f = feats(ev)
    assert list(f[:, F["device.tier"]]) == [1, 1, 1, 3, 3, 3]
    assert all(f[:, F["registration.referral"]] == 1) and all(f[:, F["registration.paid"]] == 0)


def test_segment_signals_by_hand() -> None:
    ev = [
        at(0, 9, "social_graph", "friend_added", 10),
        at(5, 9, "social_graph", "friend_lost", 2),
        at(1, 9, "commerce_browsing", "cart_abandon"),
        at(2, 9, "commerce_browsing", "cart_abandon"),
        at(3, 9, "purchases", "purchase", 10),
        at(4, 9, "commerce_browsing", "cart_abandon"),
        at(0, 9, "promotions", "discount_started"),
        at(2, 10, "purchases", "purchase", 5),
        at(3, 8, "promotions", "discount_ended"),
    ]
    f = feats(ev, today=6)
    assert math.isclose(f[6, F["social.friends_lost_share_28d"]], 0.2, rel_tol=1e-6)
    assert list(f[:, F["commerce.abandoned_cart_streak"]]) == [0, 1, 0, 0, 1, 1, 1]
    assert list(f[:, F["promo.discount_active"]]) == [1, 1, 1, 0, 0, 0, 0]
    assert f[6, F["promo.days_since_discount_end"]] == 3
    assert math.isclose(f[6, F["promo.discount_dependence"]], 0.5)


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(1, 60))
    out = []
    for _ in range(n):
        c = draw(st.sampled_from(CATEGORIES))
        a = draw(st.sampled_from(c.actions))
        out.append(
            at(
                draw(st.integers(0, 40)),
                draw(st.floats(0, 23.99)),
                c.id,
                a.name,
                draw(st.floats(0, 500)),
                tz=draw(st.sampled_from([0, 480, -300])),
            )
        )
    return out


@settings(max_examples=40, deadline=None)
@given(histories(), st.integers(1, 40))
def test_features_of_a_day_use_only_that_day_and_before(events: list[Event], cut: int) -> None:
    arr = to_array(events)
    full = device_features(arr)
    days = full.days
    if cut >= len(days):
        return
    prefix = device_features(arr, first_day=int(days[0]), today=int(days[cut - 1]))
    np.testing.assert_allclose(prefix.features, full.features[:cut], rtol=1e-6, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.lists(histories(), min_size=1, max_size=4))
def test_batch_equals_one_device_at_a_time(devices: list[list[Event]]) -> None:
    arrays = [to_array(e) for e in devices]
    start, n_days = D0 - 1, 45
    allev = np.concatenate(arrays) if arrays else np.zeros(0, EVENT_DTYPE)
    dev = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    batch = daily_aggregates_batch(allev, dev, len(arrays), start, n_days)
    days = np.arange(start, start + n_days)
    fb = extract_features(batch, days, np.full(len(arrays), start))
    for i, a in enumerate(arrays):
        single = daily_aggregates(a, start, start + n_days - 1)
        np.testing.assert_array_equal(np.nan_to_num(batch[i], nan=-1), np.nan_to_num(single, nan=-1))
        np.testing.assert_allclose(fb[i], extract_features(single, days, start), rtol=1e-6)


def test_daily_sums_scale_and_last_values() -> None:
    ev = to_array(
        [
            at(0, 9, "sessions", "session", 120),
            at(0, 10, "sessions", "session", 60),
            at(0, 11, "content_consumption", "content_viewed", 7.5),
        ]
    )
    d = daily_aggregates(ev, D0, D0)
    assert d[0, CHANNEL_INDEX["session_minutes"]] == 3.0
    assert d[0, CHANNEL_INDEX["content_minutes"]] == 7.5
    assert np.isnan(d[0, CHANNEL_INDEX["device_tier"]])
