"""Daily aggregates -> one float32 feature vector per device-day (numpy only).

Vectorised over days: a history of N days yields all N vectors in one pass, and over devices:
any leading batch axes are carried through. The formulas are declared in
`fedchurn.shared.feature_spec.FEATURES`; this module computes them in that order.
"""

from __future__ import annotations

import numpy as np

from fedchurn.shared import feature_spec as fs
from fedchurn.shared.catalogue import BY_ID, CATEGORY_IDS
from fedchurn.shared.events import weekday

C = fs.CHANNEL_INDEX
N_CAT = len(CATEGORY_IDS)
_NEVER = -(10**6)  # "no such day" index, far enough back that any recency caps


def _csum(x: np.ndarray) -> np.ndarray:
    """Cumulative sum along days with a leading 0: windows are differences of two entries."""
    out = np.zeros((*x.shape[:-1], x.shape[-1] + 1))
    np.cumsum(x, axis=-1, out=out[..., 1:])
    return out


def _win(s: np.ndarray, w: int) -> np.ndarray:
    """Window sums of w days from a `_csum` array."""
    D = s.shape[-1] - 1
    if w >= D:
        return s[..., 1:] - s[..., :1]
    out = s[..., 1:].copy()
    out[..., w:] -= s[..., 1 : D + 1 - w]
    return out


def _window(x: np.ndarray, w: int) -> np.ndarray:
    """Sum of x over the w days ending at each day (axis -1), counting only days in range."""
    return _win(_csum(x), w)


def _lag_window(x: np.ndarray, w: int, lag: int) -> np.ndarray:
    """Sum of x over the w days ending `lag` days before each day."""
    return _window(x, w + lag) - _window(x, lag)


def _last_true(cond: np.ndarray) -> np.ndarray:
    """Index of the last day <= t where cond holds (_NEVER when none)."""
    t = np.arange(cond.shape[-1])
    return np.maximum.accumulate(np.where(cond, t, _NEVER), axis=-1)


def _streak(cond: np.ndarray) -> np.ndarray:
    """Consecutive days up to and including each day on which cond holds."""
    t = np.arange(cond.shape[-1])
    last_false = np.maximum.accumulate(np.where(cond, -1, t), axis=-1)
    return (t - last_false).astype(np.float64) * cond


def _ffill_last(x: np.ndarray) -> np.ndarray:
    """Carry the last known value forward; 0 before the first one."""
    idx = _last_true(~np.isnan(x))
    filled = np.take_along_axis(np.nan_to_num(x, nan=0.0), np.maximum(idx, 0), axis=-1)
    return np.where(idx >= 0, filled, 0.0)


def _safe_div(a: np.ndarray, b: np.ndarray, default: float) -> np.ndarray:
    out = np.full(np.broadcast(a, b).shape, default, dtype=np.float64)
    np.divide(a, b, out=out, where=b > 0)
    return out


def _extended(
    counts: np.ndarray,
    cs: np.ndarray,
    ch: np.ndarray,
    amount: np.ndarray,
    a_cs: np.ndarray,
    t: np.ndarray,
    valid: np.ndarray,
    fd: np.ndarray,
    days: np.ndarray,
) -> dict[str, np.ndarray]:
    """The extended block (`fs._extended`): long windows, history rhythm and money."""
    f: dict[str, np.ndarray] = {}
    for w in fs.LONG_WINDOWS:
        win = np.log1p(_win(cs, w))
        for k, c in enumerate(CATEGORY_IDS):
            f[f"{c}.count_{w}d"] = win[k]
    a90 = _win(a_cs, 90)
    f["rfm.monetary_90d"] = np.log1p(a90)
    f["rfm.monetary_365d"] = np.log1p(_win(a_cs, 365))
    f["rfm.monetary_total"] = np.log1p(np.cumsum(amount, axis=-1))
    a_prior = _win(a_cs, 90 + fs.MONETARY_PRIOR) - a90
    f["rfm.monetary_trend"] = np.log((a90 + 1.0) / (a_prior * 90 / fs.MONETARY_PRIOR + 1.0))
    f["rfm.refunds_365d"] = np.log1p(_window(ch[C["refund_amount"]], 365))
    f.update(_history(counts, t, valid, fd, days))
    return f


def _history(
    counts: np.ndarray, t: np.ndarray, valid: np.ndarray, fd: np.ndarray, days: np.ndarray
) -> dict[str, np.ndarray]:
    """Recency, frequency and the rhythm of the days with a behaviour event, over all history."""
    behaviour = counts[[k for k, c in enumerate(CATEGORY_IDS) if c != "device_context"]].sum(axis=0)
    act = (behaviour > 0) & valid
    last = _last_true(act)  # last active day <= t
    seen = last > _NEVER // 2
    prev = np.concatenate([np.full((*last.shape[:-1], 1), _NEVER), last[..., :-1]], axis=-1)
    has_gap = act & (prev > _NEVER // 2)
    gap = np.where(has_gap, t - prev, 0).astype(np.float64)
    n_gaps = np.cumsum(has_gap, axis=-1)
    s1, s2 = np.cumsum(gap, axis=-1), np.cumsum(gap * gap, axis=-1)
    mean = _safe_div(s1, n_gaps, 0.0)
    std = np.sqrt(np.maximum(_safe_div(s2, n_gaps, 0.0) - mean * mean, 0.0))
    age = np.maximum(days - fd, 0).astype(np.float64)
    recency = np.where(seen, t - last, age).astype(np.float64)
    return {
        "history.recency_days": np.log1p(recency),
        "history.active_days": np.log1p(np.cumsum(act, axis=-1).astype(np.float64)),
        "history.gap_mean_days": np.log1p(mean),
        "history.gap_std_days": np.log1p(std),
        "history.gap_last_days": np.log1p(np.take_along_axis(gap, np.maximum(last, 0), axis=-1) * seen),
        "history.overdue": np.minimum(_safe_div(recency, mean, 0.0), fs.OVERDUE_CAP),
    }


def activity_index(daily: np.ndarray) -> np.ndarray:
    raw = sum(w * np.log1p(daily[..., C[name]]) for name, w in fs.ACTIVITY_WEIGHTS.items())
    raw = np.asarray(raw, dtype=np.float64)
    return 100.0 * raw / (raw + fs.ACTIVITY_K)


def extract_features(
    daily: np.ndarray,
    days: np.ndarray,
    first_day: np.ndarray | int | None = None,
    n_features: int = fs.N_FEATURES,
) -> np.ndarray:
    """Feature vectors for every day: daily (..., D, C) -> (..., D, n_features) float32, the first
    `n_features` of the specification (`fs.BASE_FEATURES` skips the extended block's work).

    `days` holds the absolute local day number of each row; `first_day` (per device) is the first
    day of the device's history (default: the first row). Rows before it are computed but
    meaningless; the caller ignores them.
    """
    if not 1 <= n_features <= fs.N_FEATURES:
        raise ValueError(f"n_features must be 1..{fs.N_FEATURES}, got {n_features}")
    daily = np.asarray(daily, dtype=np.float64)
    days = np.asarray(days, dtype=np.int64)
    D = daily.shape[-2]
    if days.shape != (D,):
        raise ValueError(f"days has shape {days.shape}, expected ({D},)")
    fd = np.asarray(days[0] if first_day is None else first_day, dtype=np.int64)[..., None]
    valid = days >= fd  # (..., D)
    t = np.arange(D)
    ch = np.moveaxis(daily, -1, 0)  # (C, ..., D): ch[j] is one channel over days
    counts = ch[:N_CAT]
    f: dict[str, np.ndarray] = {}

    cs = _csum(counts)
    for w in fs.WINDOWS:
        win = np.log1p(_win(cs, w))
        for k, c in enumerate(CATEGORY_IDS):
            f[f"{c}.count_{w}d"] = win[k]
    recent = _win(cs, fs.TREND_RECENT)
    prior = _win(cs, fs.TREND_PRIOR + fs.TREND_RECENT) - recent
    trend = np.log((recent + 1.0) / (prior * fs.TREND_RECENT / fs.TREND_PRIOR + 1.0))
    recency = np.minimum(t - _last_true(counts > 0), fs.RECENCY_CAP).astype(np.float64)
    for k, c in enumerate(CATEGORY_IDS):
        f[f"{c}.trend"] = trend[k]
        f[f"{c}.recency_days"] = recency[k]

    sessions = counts[BY_ID["sessions"].number - 1]
    active = (sessions > 0).astype(np.float64)
    f["active_days_7d"] = _window(active, 7)
    f["active_days_28d"] = _window(active, 28)
    amount = ch[C["purchase_amount"]]
    a_cs = _csum(amount)
    f["rfm.monetary_28d"] = np.log1p(_win(a_cs, 28))
    if n_features > fs.BASE_FEATURES:
        f.update(_extended(counts, cs, ch, amount, a_cs, t, valid, fd, days))
    f["session_minutes_7d"] = np.log1p(_window(ch[C["session_minutes"]], 7))

    # Activity index against the user's own trailing baseline.
    index = activity_index(daily)
    vmask = valid.astype(np.float64)
    prev_sum = _lag_window(index * vmask, fs.BASELINE_DAYS, 1)
    prev_n = _lag_window(vmask, fs.BASELINE_DAYS, 1)
    baseline = np.where(prev_n > 0, _safe_div(prev_sum, prev_n, 0.0), index)
    f["activity.index"] = index
    f["activity.baseline"] = baseline
    f["activity.ratio"] = _safe_div(index, baseline, 1.0)
    below = valid & (baseline > 0) & (index < fs.SILENCE_RATIO * baseline)
    f["activity.days_below_baseline"] = _streak(below)

    # Content consumption against the user's historical mean (all previous days of history).
    content = ch[C["content_minutes"]]
    hist_sum = np.cumsum(content * vmask, axis=-1) - content * vmask
    hist_n = np.cumsum(vmask, axis=-1) - vmask
    hist_mean = _safe_div(hist_sum, hist_n, 0.0)
    f["content.vs_mean"] = np.minimum(_safe_div(content, hist_mean, 1.0), fs.CONTENT_RATIO_CAP)
    f["content.days_below_40pct"] = _streak(
        valid & (hist_mean > 0) & (content < fs.CONTENT_RATIO * hist_mean)
    )

    # Promotions: is a discount running, how long since one ended, how much buying depends on them.
    last_start = _last_true(ch[C["discount_started"]] > 0)
    last_end = _last_true(ch[C["discount_ended"]] > 0)
    discount_active = (last_start > last_end).astype(np.float64)
    purchases = counts[BY_ID["purchases"].number - 1]
    f["promo.discount_active"] = discount_active
    f["promo.days_since_discount_end"] = np.minimum(t - last_end, fs.RECENCY_CAP).astype(np.float64)
    f["promo.discount_dependence"] = _safe_div(
        np.cumsum(purchases * discount_active, axis=-1), np.cumsum(purchases, axis=-1), 0.0
    )

    # Social: share of friends lost over 28 days.
    added, lost = ch[C["friends_added"]], ch[C["friends_lost"]]
    friends_before = np.cumsum(added - lost, axis=-1) - _window(added - lost, 28)
    denom = np.maximum(friends_before + _window(added, 28), 1.0)
    f["social.friends_lost_share_28d"] = np.clip(_window(lost, 28) / denom, 0.0, 1.0)

    # Commerce: abandoned carts since the last checkout or purchase, repeated product views.
    abandon = ch[C["cart_abandon"]]
    last_reset = _last_true((ch[C["checkout"]] + purchases) > 0)
    cum_ab = np.concatenate([np.zeros((*abandon.shape[:-1], 1)), np.cumsum(abandon, axis=-1)], axis=-1)
    since = np.take_along_axis(cum_ab, np.clip(last_reset + 1, 0, D), axis=-1)
    f["commerce.abandoned_cart_streak"] = cum_ab[..., 1:] - np.where(last_reset >= 0, since, 0.0)
    f["commerce.cart_abandons_7d"] = np.log1p(_window(abandon, 7))
    f["commerce.repeat_views_7d"] = np.log1p(_window(ch[C["product_view_repeat"]], 7))

    # Habits: night-time and weekend shares of behaviour events.
    behaviour = counts[[k for k, c in enumerate(CATEGORY_IDS) if c != "device_context"]].sum(axis=0)
    total_28 = _window(behaviour, 28)
    f["habit.night_share_28d"] = _safe_div(_window(ch[C["night_events"]], 28), total_28, 0.0)
    weekend = (weekday(days) >= 5).astype(np.float64)
    f["habit.weekend_share_28d"] = _safe_div(_window(behaviour * weekend, 28), total_28, 0.0)

    # Static and environment context.
    f["account_age_days"] = np.log1p(np.maximum(days - fd, 0)).astype(np.float64)
    reg = _ffill_last(ch[C["registration_channel"]])
    f["device.tier"] = _ffill_last(ch[C["device_tier"]])
    f["registration.paid"] = (reg == 1).astype(np.float64)
    f["registration.referral"] = (reg == 2).astype(np.float64)
    f["env.same_category_apps"] = np.log1p(_ffill_last(ch[C["same_category_apps"]]))
    f["env.notifications_enabled"] = _ffill_last(ch[C["notifications_enabled"]])

    names = fs.FEATURE_NAMES[:n_features]
    out = np.empty((*daily.shape[:-1], len(names)), dtype=np.float32)
    for k, name in enumerate(names):  # one float32 array, no float64 stack in between
        out[..., k] = f[name]
    return out
