"""Simulated population: behaviour histories of many devices in the event schema, truth kept apart.

Every random draw is a counter-based hash of (population seed, device, scenario knobs, stream, day,
...) through the splitmix64 finaliser, and every number is computed with IEEE basic arithmetic only
(+ - * / sqrt floor; no exp/log/pow), so that:

* the history of device i is a pure function of (seed, i, scenario): a Flower client can generate
  its own device alone (`generate_device`) and gets exactly the rows `generate_population` writes;
* the batch path is vectorised across devices (numpy arrays of shape devices x days) and still
  bit-identical to the single-device path, on any IEEE-754 machine.

This randomness is for simulation only; it is not cryptographic. See `docs/population.md` for the
generative model and `simulations/scenarios/default.toml` for the knobs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fedchurn.shared.catalogue import BY_ID, CATEGORIES, CATEGORY_IDS
from fedchurn.shared.events import EVENT_DTYPE, SECONDS_PER_DAY
from fedchurn.simulations.blocks import map_blocks
from fedchurn.simulations.scenario import SEGMENTS, Scenario

Array = np.ndarray
ProgressFn = Callable[[int, int], None]

# ---------------------------------------------------------------------------------------------
# Counter-based randomness
# ---------------------------------------------------------------------------------------------
_U = np.uint64
_GOLDEN = _U(0x9E3779B97F4A7C15)
_M1 = _U(0xBF58476D1CE4E5B9)
_M2 = _U(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
_EVENT_STREAM = 1 << 62


def _mix(x: Array) -> Array:
    """splitmix64 finaliser, in place on a fresh uint64 array."""
    t = x >> _U(30)
    x ^= t
    x *= _M1
    np.right_shift(x, _U(27), out=t)
    x ^= t
    x *= _M2
    np.right_shift(x, _U(31), out=t)
    x ^= t
    return x


def _mix_int(x: int) -> int:
    x &= _MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def device_keys(seed: int, devices: Array, scenario: Scenario) -> Array:
    """One 64-bit key per device from (seed, device, scenario knobs); every draw hashes from it."""
    base = _mix_int(_mix_int(seed & _MASK64) ^ _mix_int(scenario.knob_hash() + 0x632BE59BD9B4E019))
    x = devices.astype(np.uint64) * _GOLDEN + _U(base)
    return _mix(_mix(x))


def _hash(key: Array, counters: Array) -> Array:
    """uint64 hash for each (device key, counter): shape key.shape + counters.shape."""
    return _mix(key.reshape(key.shape + (1,) * counters.ndim) + counters.astype(np.uint64) * _GOLDEN)


def _unit53(h: Array) -> Array:
    return (h >> _U(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _lanes16(h: Array) -> list[Array]:
    """Four uniforms in (0, 1) with 16-bit resolution from one hash (cheap stochastic rounding)."""
    return [(((h >> _U(16 * j)) & _U(0xFFFF)).astype(np.float64) + 0.5) * (1.0 / 65536.0) for j in range(4)]


_LANE_SHIFTS = np.array([0, 16, 32, 48], dtype=np.uint64)


def _lanes32(h: Array) -> tuple[Array, Array]:
    lo = ((h & _U(0xFFFFFFFF)).astype(np.float64) + 0.5) * (1.0 / 4294967296.0)
    hi = ((h >> _U(32)).astype(np.float64) + 0.5) * (1.0 / 4294967296.0)
    return lo, hi


def _dev_uniforms(key: Array, stream: int, n: int) -> Array:
    """(devices, n) uniforms for per-device parameters."""
    return _unit53(_hash(key, (stream << 24) + 1 + np.arange(n, dtype=np.int64)))


def _day_hash(key: Array, stream: int, n_days: int) -> Array:
    """(devices, days) hashes for per-day draws."""
    return _hash(key, (stream << 24) + 1 + np.arange(n_days, dtype=np.int64))


_LAB_STREAM = 1 << 61  # the what-if lab's draws, apart from every stream of the event generator


def lab_uniforms(keys: Array, day: int, stream: int) -> Array:
    """One uniform in [0, 1) per device key for (local day, stream) of the what-if lab: the same
    draw for the same device, day and stream whatever else happens (common random numbers)."""
    counter = ((_LAB_STREAM + (stream << 32) + (day & 0xFFFFFFFF)) * int(_GOLDEN)) & _MASK64
    return _unit53(_mix(keys.astype(np.uint64) + np.uint64(counter)))


def _pick(u: Array, weights: tuple[float, ...] | list[float]) -> Array:
    total = float(sum(weights))
    cum = np.array([sum(weights[: i + 1]) / total for i in range(len(weights))])
    return np.minimum(np.searchsorted(cum, u, side="right"), len(weights) - 1)


# ---------------------------------------------------------------------------------------------
# Channels: (category, action) pairs the generator emits, with the model's per-segment base rates
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ch:
    cat: str
    action: str
    rates: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # per active day, SEGMENTS order
    stochastic: bool = True


_CHANNELS: tuple[tuple[str, _Ch], ...] = (
    ("feature_used", _Ch("feature_usage", "feature_used", (0.9, 0.6, 0.6, 1.8))),
    ("feature_path_step", _Ch("feature_usage", "feature_path_step", (0.4, 0.2, 0.2, 0.9))),
    ("content_viewed", _Ch("content_consumption", "content_viewed", (0.4, 2.2, 1.0, 0.2))),
    ("post_created", _Ch("content_creation", "post_created", (0.02, 0.08, 0.25, 0.01))),
    ("reaction", _Ch("reactions", "reaction", (0.15, 0.9, 1.5, 0.04))),
    ("comment", _Ch("comments", "comment", (0.03, 0.25, 0.5, 0.02))),
    ("share", _Ch("shares", "share", (0.03, 0.2, 0.3, 0.03))),
    ("message_sent", _Ch("private_messages", "message_sent", (0.25, 0.45, 2.0, 0.3))),
    ("profile_updated", _Ch("profile_updates", "profile_updated", (0.05, 0.06, 0.16, 0.04))),
    ("friend_added", _Ch("social_graph", "friend_added", (0.02, 0.04, 0.12, 0.01))),
    ("friend_lost", _Ch("social_graph", "friend_lost", (0.01, 0.02, 0.05, 0.005))),
    ("search", _Ch("search", "search", (0.6, 0.4, 0.25, 0.8))),
    ("search_result_opened", _Ch("search", "search_result_opened", (0.4, 0.25, 0.15, 0.5))),
    ("product_view", _Ch("commerce_browsing", "product_view", (1.6, 0.2, 0.12, 0.12))),
    ("product_view_repeat", _Ch("commerce_browsing", "product_view_repeat", (0.35, 0.03, 0.02, 0.02))),
    ("cart_edit", _Ch("commerce_browsing", "cart_edit", (0.35, 0.03, 0.02, 0.02))),
    ("cart_abandon", _Ch("commerce_browsing", "cart_abandon", (0.1, 0.01, 0.01, 0.01))),
    ("purchase", _Ch("purchases", "purchase", (0.1, 0.03, 0.02, 0.04))),
    ("notification_opened", _Ch("notifications", "notification_opened", (0.25, 0.25, 0.4, 0.12))),
    ("notification_dismissed", _Ch("notifications", "notification_dismissed", (0.2, 0.2, 0.25, 0.15))),
    ("ticket_opened", _Ch("support", "ticket_opened", (0.008, 0.006, 0.005, 0.015))),
    # Derived or scheduled channels (counts computed, not drawn per channel).
    ("session", _Ch("sessions", "session", stochastic=False)),
    ("ticket_resolved", _Ch("support", "ticket_resolved", stochastic=False)),
    ("checkout", _Ch("commerce_browsing", "checkout", stochastic=False)),
    ("coupon_redeemed", _Ch("promotions", "coupon_redeemed", stochastic=False)),
    ("discount_started", _Ch("promotions", "discount_started", stochastic=False)),
    ("discount_ended", _Ch("promotions", "discount_ended", stochastic=False)),
    ("friends_initial", _Ch("social_graph", "friend_added", stochastic=False)),
    ("friends_episode", _Ch("social_graph", "friend_lost", stochastic=False)),
    ("device_tier", _Ch("device_context", "device_tier", stochastic=False)),
    ("registration_channel", _Ch("device_context", "registration_channel", stochastic=False)),
    ("same_category_apps", _Ch("device_context", "same_category_apps", stochastic=False)),
    ("notifications_enabled", _Ch("device_context", "notifications_enabled", stochastic=False)),
)
CH: dict[str, int] = {name: i for i, (name, _) in enumerate(_CHANNELS)}
K = len(_CHANNELS)
N_STOCH = sum(ch.stochastic for _, ch in _CHANNELS)
_CH_CAT = np.array([CATEGORY_IDS.index(ch.cat) for _, ch in _CHANNELS], dtype=np.uint8)
_CH_ACT = np.array([BY_ID[ch.cat].action_names().index(ch.action) for _, ch in _CHANNELS], dtype=np.uint8)
_BASE_RATES = np.array([ch.rates for _, ch in _CHANNELS[:N_STOCH]], dtype=np.float64).T  # (segments, N_STOCH)
_GENERIC = np.array(
    [
        n
        in (
            "feature_used",
            "feature_path_step",
            "reaction",
            "comment",
            "share",
            "post_created",
            "search",
            "search_result_opened",
            "product_view",
            "notification_opened",
        )
        for n, _ in _CHANNELS[:N_STOCH]
    ]
)  # scaled down with engagement before churn
_SOCIAL_CH = np.array([n in ("message_sent", "reaction", "comment") for n, _ in _CHANNELS[:N_STOCH]])
_MAX_PER_CELL = 40  # caps a burst; the per-event hash reserves 8 bits for the rank in a cell

# Segment tables (SEGMENTS order: price_sensitive, content_dependent, social, utility).
PRICE, CONTENT, SOCIAL, UTILITY = range(4)
_WEEKDAY = np.array(  # activity x this per weekday, Monday first
    [
        [1.0, 1.0, 1.0, 1.0, 1.1, 1.2, 1.15],
        [0.9, 0.9, 0.9, 0.95, 1.05, 1.25, 1.25],
        [0.95, 0.95, 0.95, 1.0, 1.1, 1.2, 1.1],
        [1.1, 1.1, 1.1, 1.1, 1.0, 0.75, 0.7],
    ]
)
_HOLIDAY_ACTIVITY = np.array([1.0, 1.15, 1.1, 0.7])
_SESSION_SECONDS = np.array([240.0, 900.0, 600.0, 150.0])
_CONTENT_MINUTES = np.array([3.0, 12.0, 5.0, 2.0])
_EXTRA_SESSIONS = np.array([0.4, 0.8, 1.2, 0.5])
_FRIENDS_RANGE = np.array([[0.0, 30.0], [5.0, 60.0], [40.0, 300.0], [0.0, 15.0]])
_BASKET = np.array([25.0, 40.0, 40.0, 40.0])
_FEED_RATE = np.array([0.0, 1.0, 0.3, 0.0])  # x triggers.feed_drop_rate
_FRIENDS_RATE = np.array([0.15, 0.35, 1.0, 0.15])  # x triggers.friends_episode_rate
_COMPETITOR_RATE = np.array([0.3, 0.3, 0.3, 1.0])  # x triggers.competitor_rate

CAUSES: tuple[str, ...] = (
    "none",
    "engagement",
    "discount_ended",
    "feed_quality",
    "friends_left",
    "competitor",
)
QUIET_KINDS: tuple[str, ...] = ("quiet_return", "holiday", "post_promo")
_FAR = 1 << 30  # "never" day


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class DeviceHistory:
    """One device: its events (EVENT_DTYPE, sorted by ts) and the ground truth the device never sees."""

    device: int
    events: Array
    truth: dict[str, Any]


@dataclass
class Population:
    """Events of many devices as column arrays (sorted by device, ts) and a truth table."""

    seed: int
    scenario: Scenario
    n_devices: int
    days: int
    events: dict[str, Array]  # device int64, ts int64, tz_min int16, cat uint8, action uint8, value float64
    truth: dict[str, Array]  # one row per device; see `TRUTH_COLUMNS`
    offsets: Array = field(repr=False)  # events of device i are rows offsets[i]:offsets[i+1]

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def device_events(self, i: int) -> Array:
        """Events of device i as an EVENT_DTYPE array (what the device itself would store)."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return to_event_array(self.events, slice(lo, hi))

    def event_array(self) -> Array:
        """All events as one EVENT_DTYPE array (device order); `events["device"]` says whose."""
        return to_event_array(self.events)

    def device_truth(self, i: int) -> dict[str, Any]:
        return _truth_row(self.truth, i)


TRUTH_COLUMNS: dict[str, str] = {
    "device": "device number",
    "segment": "behaviour segment (index into SEGMENTS)",
    "churn_day": "first local day of the 14-day session-free run (-1 = no churn by today + horizon)",
    "churn_observed": "the whole 14-day silence lies inside the history",
    "cause": "what drove the churn (index into CAUSES)",
    "no_warning": "a churner whose behaviour did not decay before churn",
    "start_day": "first local day of the device's history",
    "today": "last local day of the history",
    "tz_min": "UTC offset of the device clock, minutes",
    "new_user": "history starts late (installed shortly before today)",
    "night_user": "sessions mostly at local hours 0-5",
    "engagement": "per-device engagement level (1 = typical)",
    "device_tier": "0 low, 1 mid, 2 high, 3 tablet",
    "registration_channel": "0 organic, 1 paid, 2 referral",
    "friends_lost_share": "share of friends lost in a friends-leave episode (0 = none)",
    "quiet_kind": "kind of each planned quiet spell (index into QUIET_KINDS, -1 = unused slot)",
    "quiet_start": "first local day of each quiet spell",
    "quiet_end": "last local day of each quiet spell (inclusive)",
}


def _truth_row(truth: dict[str, Array], i: int) -> dict[str, Any]:
    churn = int(truth["churn_day"][i])
    spans = [
        {"kind": QUIET_KINDS[int(k)], "start": int(s), "end": int(e)}
        for k, s, e in zip(
            truth["quiet_kind"][i], truth["quiet_start"][i], truth["quiet_end"][i], strict=True
        )
        if k >= 0
    ]
    return {
        "device": int(truth["device"][i]),
        "segment": SEGMENTS[int(truth["segment"][i])],
        "churn_day": None if churn < 0 else churn,
        "churn_observed": bool(truth["churn_observed"][i]),
        "cause": CAUSES[int(truth["cause"][i])],
        "no_warning": bool(truth["no_warning"][i]),
        "start_day": int(truth["start_day"][i]),
        "today": int(truth["today"][i]),
        "tz_min": int(truth["tz_min"][i]),
        "new_user": bool(truth["new_user"][i]),
        "night_user": bool(truth["night_user"][i]),
        "engagement": float(truth["engagement"][i]),
        "device_tier": int(truth["device_tier"][i]),
        "registration_channel": int(truth["registration_channel"][i]),
        "friends_lost_share": float(truth["friends_lost_share"][i]),
        "quiet_spans": spans,
    }


# ---------------------------------------------------------------------------------------------
# The generator (vectorised over a block of devices; one device is a block of one)
# ---------------------------------------------------------------------------------------------
def _ramp(k: Array, n: int, first: float, last: float) -> Array:
    return first + (last - first) * (k.astype(np.float64) / float(max(n - 1, 1)))


def _first_true(mask: Array, fill: int) -> Array:
    """Index of the first True per row, `fill` when none."""
    idx = np.argmax(mask, axis=1)
    return np.where(mask[np.arange(mask.shape[0]), idx], idx, fill)


def _row_mean(x: Array, lo: Array, hi: Array) -> Array:
    """Mean of x[b, lo:hi] per row (0 when empty), by a sequential cumulative sum (exact order)."""
    cs = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x, axis=1)], axis=1)
    rows = np.arange(x.shape[0])
    lo_c = np.clip(lo, 0, x.shape[1])
    hi_c = np.clip(hi, lo_c, x.shape[1])
    n = hi_c - lo_c
    return np.where(n > 0, (cs[rows, hi_c] - cs[rows, lo_c]) / np.maximum(n, 1), 0.0)


def _simulate(seed: int, devices: Array, sc: Scenario) -> tuple[dict[str, Array], dict[str, Array], Array]:
    """Events (columns, sorted by device then ts), truth columns and per-device event counts."""
    B = len(devices)
    D = sc.days
    H = sc.horizon_days
    T = D + H
    W = sc.decay.window_days
    eng, chn, trg, dec, fool = sc.engagement, sc.churn, sc.triggers, sc.decay, sc.foolers
    key = device_keys(seed, devices, sc)
    t_idx = np.arange(T, dtype=np.int64)[None, :]

    # ---- per-device parameters ------------------------------------------------------------
    u = _dev_uniforms(key, 1, 40)
    seg = _pick(u[:, 0], sc.segments.shares())
    tz = np.array([z for z, _ in sc.timezones], dtype=np.int64)[_pick(u[:, 1], [w for _, w in sc.timezones])]
    night = u[:, 2] < eng.night_user_rate
    habit = np.where(night, 0.5 + 4.0 * u[:, 3], 8.0 + 13.0 * u[:, 3])  # local hour of the typical session
    spread = np.where(night, 2.0, 5.0)
    lvl_u = u[:, 4]
    skew = eng.level_skew - 1.0  # in [0, 1]: blend of u (uniform levels) and u^2 (more low levels)
    level = eng.level_min + (eng.level_max - eng.level_min) * ((1.0 - skew) * lvl_u + skew * lvl_u * lvl_u)
    weekend_pref = 0.85 + 0.3 * u[:, 5]
    tier = _pick(u[:, 6], [0.3, 0.4, 0.2, 0.1])
    channel = _pick(u[:, 7], [0.55, 0.3, 0.15])
    apps0 = np.floor(u[:, 8] * u[:, 8] * 6.0)
    notif0 = u[:, 9] < 0.75
    new_user = u[:, 10] < fool.new_user_rate
    max_age = min(fool.new_user_max_age_days, D - 1)
    age = 3 + np.floor(u[:, 11] * (max_age - 2)).astype(np.int64)
    s0 = np.where(new_user, D - age, 0)  # first day of history (index)
    nw_flag = u[:, 12] < chn.no_warning_rate
    f_lo, f_hi = _FRIENDS_RANGE[seg, 0], _FRIENDS_RANGE[seg, 1]
    friends0 = np.floor(f_lo + (f_hi - f_lo) * u[:, 16] * u[:, 16])
    basket = _BASKET[seg] * (0.5 + u[:, 17])
    sqrt_level = np.sqrt(level)

    # ---- latent engagement drift (AR(1), exact sequential arithmetic) ----------------------
    h_z = _day_hash(key, 100, T)
    z_lanes = _lanes16(h_z)
    e_z = (z_lanes[0] - 0.5) * math.sqrt(12.0)  # unit variance
    gap_max = 9 + np.floor(z_lanes[1] * 4.0).astype(np.int64)  # longest ordinary gap allowed that day
    rho = eng.drift_persistence
    innov = eng.drift_sd * math.sqrt(1.0 - rho * rho)
    z = np.empty((T, B))
    z[0] = eng.drift_sd * (u[:, 34] - 0.5) * math.sqrt(12.0)
    e_zt = np.ascontiguousarray(e_z.T)
    for t in range(1, T):
        z[t] = rho * z[t - 1] + innov * e_zt[t]
    z = z.T
    m = 1.0 + z / (1.0 + np.abs(z))  # engagement multiplier in (0, 2)

    # ---- schedules: promotions, feed drops, friends leaving, competitor apps ----------------
    P = fool.promo_period_days
    Kp = T // P + 2
    up = _dev_uniforms(key, 2, Kp * 8).reshape(B, Kp, 8)
    phase = np.floor(u[:, 33] * P).astype(np.int64)
    p_start = (
        (np.arange(Kp)[None, :] - 1) * P + phase[:, None] + np.floor(up[:, :, 1] * (P - 14)).astype(np.int64)
    )
    p_len = fool.promo_days_min + np.floor(up[:, :, 2] * (fool.promo_days_max - fool.promo_days_min + 1))
    p_end = p_start + p_len.astype(np.int64)  # discount_ended day (first day without the discount)
    participation = np.array(fool.promo_participation)[seg]
    p_ok = (up[:, :, 0] < participation[:, None]) & (p_start >= s0[:, None] + 1) & (p_end < T)
    lull = p_ok & (up[:, :, 3] < fool.promo_lull_rate)
    lull_len = 2 + np.floor(up[:, :, 4] * (fool.promo_lull_days_max - 1)).astype(np.int64)
    disc_trig = p_ok & (seg[:, None] == PRICE) & (up[:, :, 5] < trg.discount_churn_prob)
    disc_churn = np.where(
        disc_trig, p_end + trg.discount_tolerance_days + np.floor(up[:, :, 6] * 3).astype(np.int64) - 1, _FAR
    ).min(axis=1)

    feed_ok = u[:, 18] < trg.feed_drop_rate * _FEED_RATE[seg]
    feed_day = s0 + 14 + np.floor(u[:, 19] * np.maximum(T - s0 - 14, 0)).astype(np.int64)
    feed_ok &= feed_day < T
    feed_churn = np.where(
        feed_ok & (u[:, 20] < trg.feed_churn_prob),
        feed_day + trg.feed_reaction_days + np.floor(u[:, 21] * 5).astype(np.int64) - 2,
        _FAR,
    )

    fr_ok = u[:, 22] < trg.friends_episode_rate * _FRIENDS_RATE[seg]
    fr_start = s0 + 7 + np.floor(u[:, 23] * np.maximum(T - s0 - 7, 0)).astype(np.int64)
    fr_phi = 0.03 + (trg.friends_loss_max - 0.03) * u[:, 25]
    fr_total = np.floor(fr_phi * friends0 + 0.5)
    fr_ok &= (fr_start < T) & (fr_total >= 1)
    fr_days = np.minimum(6 + np.floor(u[:, 24] * 7), fr_total).astype(np.int64)
    fr_days = np.maximum(fr_days, 1)
    fr_phi = np.where(fr_ok, fr_total / np.maximum(friends0, 1.0), 0.0)
    cross = np.floor(trg.friends_churn_threshold / np.maximum(fr_phi, 1e-9) * fr_days).astype(np.int64) + 1
    fr_churn = np.where(
        fr_ok & (fr_phi > trg.friends_churn_threshold) & (u[:, 26] < trg.friends_churn_prob),
        fr_start + np.minimum(cross, fr_days) + 1 + np.floor(u[:, 27] * 5).astype(np.int64),
        _FAR,
    )

    comp_ok = u[:, 28] < trg.competitor_rate * _COMPETITOR_RATE[seg]
    comp_day = s0 + 7 + np.floor(u[:, 29] * np.maximum(T - s0 - 7, 0)).astype(np.int64)
    comp_ok &= comp_day < T
    comp_churn = np.where(
        comp_ok & (u[:, 30] < trg.competitor_churn_prob),
        comp_day + 5 + np.floor(u[:, 31] * 11).astype(np.int64),
        _FAR,
    )
    apps = apps0[:, None] + (comp_ok[:, None] & (t_idx >= comp_day[:, None]))

    # ---- hazard churn --------------------------------------------------------------------
    static = np.array(chn.segment_hazard)[seg] * np.where(channel == 1, chn.paid_channel_multiplier, 1.0)
    static = static * np.where(notif0, 1.0, chn.notifications_off_multiplier)
    static = (
        static
        * (1.0 + chn.same_category_app_multiplier * apps0)
        * np.where(tier == 0, chn.low_tier_multiplier, 1.0)
    )
    q = 1.1 / (sqrt_level[:, None] * m + 0.1)
    hz = np.full((B, T), chn.base_hazard) * static[:, None]
    for _ in range(chn.engagement_sensitivity):
        hz = hz * q
    onboarding = new_user[:, None] & (t_idx < s0[:, None] + chn.onboarding_days)
    hz = np.where(onboarding, hz * chn.new_user_hazard_multiplier, hz)
    h_a = _day_hash(key, 101, T)
    u_act, u_haz = _lanes32(h_a)
    haz_churn = _first_true((u_haz < hz) & (t_idx >= s0[:, None] + 1), _FAR)

    cands = np.stack([np.full(B, _FAR), haz_churn, disc_churn, feed_churn, fr_churn, comp_churn], axis=1)
    cands = np.where(cands >= s0[:, None] + 1, cands, _FAR)
    cause = np.argmin(cands, axis=1)
    churn = cands[np.arange(B), cause]
    churned = churn < T
    cause = np.where(churned, cause, 0)
    churn = np.where(churned, churn, T)  # T = "not within the simulated span"
    warned = churned & ~nw_flag
    win_start = churn - W
    # Warned churners disengage gradually over the weeks before the window, then sharply in it.
    k_pre = t_idx - (win_start - dec.predecline_days)[:, None]
    pre = warned[:, None] & (k_pre >= 0) & (k_pre < dec.predecline_days)
    pre_mult = np.where(pre, _ramp(k_pre, dec.predecline_days, 1.0, dec.predecline_floor), 1.0)
    L = level[:, None] * m * pre_mult  # engagement per day

    # ---- quiet spells (never 14 days, never touching the churn window) ---------------------
    uq = u
    q_start = [s0 + 3 + np.floor(uq[:, 14] * np.maximum(T - s0 - 3, 0)).astype(np.int64)]
    q_end = [
        q_start[0]
        + fool.quiet_days_min
        - 1
        + np.floor(uq[:, 15] * (fool.quiet_days_max - fool.quiet_days_min + 1)).astype(np.int64)
    ]
    q_kind = [0]
    q_ok = [u[:, 13] < fool.quiet_return_rate]
    uh = _dev_uniforms(key, 3, max(1, 3 * len(sc.holidays))).reshape(B, -1, 3)
    for j, hol in enumerate(sc.holidays):
        h_first = _iso_day(hol.start) - sc.start_day
        in_tz = np.isin(tz, np.array(hol.tz_min, dtype=np.int64)) if hol.tz_min else np.ones(B, dtype=bool)
        pre = np.floor(uh[:, j, 1] * 2).astype(np.int64)
        post = np.floor(uh[:, j, 2] * 3).astype(np.int64)
        q_start.append(h_first - pre)
        q_end.append(np.minimum(h_first + hol.days - 1 + post, h_first - pre + 9))
        q_kind.append(1)
        q_ok.append(in_tz & (uh[:, j, 0] < fool.holiday_quiet_rate))
    for j in range(Kp):
        q_start.append(p_end[:, j] + 1)
        q_end.append(p_end[:, j] + lull_len[:, j])
        q_kind.append(2)
        q_ok.append(lull[:, j])
    qs = np.stack(q_start, axis=1)
    qe = np.stack(q_end, axis=1)
    qk = np.array(q_kind, dtype=np.int64)
    last_ok_day = np.where(churned, win_start - 2, T - 1)
    qv = np.stack(q_ok, axis=1) & (qs >= s0[:, None] + 1) & (qe <= last_ok_day[:, None])
    # A spell that overlaps or touches an earlier kept one is dropped (decision 73): their forced
    # visits (the day before, the return after) would fall inside each other and be masked, and
    # the merged silence would outlast what the ground truth calls quiet.
    for j in range(1, qs.shape[1]):
        clash = qv[:, :j] & (qs[:, j, None] <= qe[:, :j] + 1) & (qs[:, :j] <= qe[:, j, None] + 1)
        qv[:, j] &= ~clash.any(axis=1)
    quiet = np.zeros((B, T), dtype=bool)
    forced = np.zeros((B, T), dtype=bool)
    rows = np.arange(B)
    for j in range(qs.shape[1]):
        ok = qv[:, j]
        quiet |= ok[:, None] & (t_idx >= qs[:, j, None]) & (t_idx <= qe[:, j, None])
        forced[rows[ok], qs[ok, j] - 1] = True  # last visit before the spell
        ok_ret = ok & (qe[:, j] + 1 < T)
        forced[rows[ok_ret], qe[ok_ret, j] + 1] = True  # the return
    forced[rows, np.minimum(s0, T - 1)] = True  # install day
    forced[rows[churned], churn[churned] - 1] = True  # last visit before churn
    alive = (t_idx >= s0[:, None]) & (t_idx < churn[:, None])
    forced &= alive & ~quiet

    # ---- activity probability ------------------------------------------------------------
    wd = (sc.start_day + t_idx + 3) % 7
    weekday = 1.0 + eng.weekend_effect * (_WEEKDAY[seg][:, wd[0]] - 1.0)
    weekday = np.where(wd >= 5, 1.0 + (weekday - 1.0) * weekend_pref[:, None], weekday)
    holiday = np.zeros((B, T), dtype=bool)
    for hol in sc.holidays:
        h0 = _iso_day(hol.start) - sc.start_day
        in_tz = np.isin(tz, np.array(hol.tz_min, dtype=np.int64)) if hol.tz_min else np.ones(B, dtype=bool)
        holiday |= in_tz[:, None] & (t_idx >= h0) & (t_idx < h0 + hol.days)
    discount = np.zeros((B, T), dtype=bool)
    for j in range(Kp):
        discount |= p_ok[:, j, None] & (t_idx >= p_start[:, j, None]) & (t_idx < p_end[:, j, None])
    feed_low = feed_ok[:, None] & (t_idx >= feed_day[:, None]) & (t_idx < feed_day[:, None] + 14)
    fr_on = fr_ok[:, None] & (t_idx >= fr_start[:, None]) & (t_idx < fr_start[:, None] + fr_days[:, None])

    act = weekday * (0.12 + 0.45 * L)
    act = np.where(holiday, act * _HOLIDAY_ACTIVITY[seg][:, None], act)
    act = np.where(discount & (seg[:, None] == PRICE), act * 1.25, act)
    act = np.where(feed_low, act * 0.85, act)
    act = np.clip(act, 0.03, 0.97)
    act = np.where(quiet, 0.0, act)

    # ---- pre-churn window ---------------------------------------------------------------
    k_win = t_idx - win_start[:, None]
    in_win = warned[:, None] & (k_win >= 0) & (k_win < W)
    act_w = np.where(
        in_win, act * _ramp(k_win, W, 1.0 - (1.0 - dec.activity_floor) / W, dec.activity_floor), act
    )
    gen_w = np.where(in_win, _ramp(k_win, W, 0.9, 0.35), 1.0)  # generic rate multiplier in the window

    # ---- which days have sessions --------------------------------------------------------
    active = ((u_act < act_w) | forced) & alive
    # Safety net: ordinary gaps end after 9-12 session-free days, quiet spells after 12 at most.
    act_t = np.ascontiguousarray(active.T)
    quiet_t = np.ascontiguousarray(quiet.T)
    alive_t = np.ascontiguousarray(alive.T)
    gap_t = np.ascontiguousarray(gap_max.T)
    since = np.zeros(B, dtype=np.int64)
    for t in range(T):
        need = alive_t[t] & (((since >= gap_t[t]) & ~quiet_t[t]) | (since >= 12))
        a = act_t[t] | need
        act_t[t] = a
        since = np.where(a | ~alive_t[t], 0, since + 1)
    active = act_t.T

    # ---- per-day rates (history days only) -------------------------------------------------
    Ld = L[:, :D]
    lvl_rate = (0.4 + 0.6 * Ld) * weekday[:, :D] * eng.events_scale
    rates = _BASE_RATES[seg][:, None, :] * lvl_rate[:, :, None]  # (B, D, N_STOCH), per active day
    c = CH
    hol_d, disc_d, feed_d, fr_d = holiday[:, :D], discount[:, :D], feed_low[:, :D], fr_on[:, :D]
    rates[:, :, c["content_viewed"]] *= np.where(hol_d, 1.2, 1.0) * np.where(feed_d, 0.5, 1.0)
    buy_boost = np.where(disc_d, np.where(seg[:, None] == PRICE, 3.0, 1.8), 1.0)
    rates[:, :, c["purchase"]] *= buy_boost
    rates[:, :, c["product_view"]] *= np.where(disc_d & (seg[:, None] == PRICE), 1.5, 1.0)
    rates *= np.where(_SOCIAL_CH & fr_d[:, :, None], 0.8, 1.0)
    cmin = np.broadcast_to(_CONTENT_MINUTES[seg][:, None] * (0.6 + 0.4 * Ld), (B, D)).copy()
    cmin = np.where(feed_d, cmin * 0.7, cmin)

    # Calibrated pre-churn signals: expected daily amounts relative to the user's earlier mean.
    nw_share = chn.no_warning_rate
    pm_ratio = 1.0 - min(0.97, dec.private_messages_drop / max(1e-9, 1.0 - nw_share))
    pu_ratio = 1.0 - min(0.97, dec.profile_updates_drop / max(1e-9, 1.0 - nw_share))
    lo = s0
    hi = np.minimum(win_start, D)
    win_d = in_win[:, :D]
    act_real = active[:, :D].astype(np.float64)
    # The window total is spread over the days the user actually shows up, declining towards churn.
    shape = np.where(in_win & active, _ramp(k_win, W, 1.6, 0.4), 0.0)
    shape_sum = np.maximum(shape.sum(axis=1), 1e-9)
    for name, ratio in (("message_sent", pm_ratio), ("profile_updated", pu_ratio)):
        earlier = _row_mean(act_real * rates[:, :, c[name]], lo, hi)
        target = np.minimum((earlier * ratio * W / shape_sum)[:, None] * shape[:, :D], 20.0)
        rates[:, :, c[name]] = np.where(win_d, target, rates[:, :, c[name]])
    content_mean = _row_mean(act_real * rates[:, :, c["content_viewed"]] * cmin, lo, hi)
    rates *= np.where(_GENERIC, gen_w[:, :D, None], 1.0)
    price_win = win_d & (seg[:, None] == PRICE)
    rates[:, :, c["product_view_repeat"]] *= np.where(price_win, dec.repeat_view_multiplier, 1.0)
    rates[:, :, c["cart_edit"]] = np.where(
        price_win, np.maximum(rates[:, :, c["cart_edit"]], 1.0), rates[:, :, c["cart_edit"]]
    )
    rates[:, :, c["purchase"]] = np.where(price_win, 0.0, rates[:, :, c["purchase"]])

    # Day-to-day mood (correlated across channels), then channels that bypass it.
    h_m = _day_hash(key, 102, D)
    u_mood, u_nsess, u_tick, u_coupon = _lanes16(h_m)
    mood = 0.5 + u_mood
    rates *= mood[:, :, None]
    rates[:, :, c["content_viewed"]] = np.where(win_d, 0.8, rates[:, :, c["content_viewed"]])
    cmin = np.where(win_d, dec.content_ratio * content_mean[:, None], cmin)
    rates[:, :, c["cart_abandon"]] = np.where(
        price_win, dec.cart_abandons_per_day, rates[:, :, c["cart_abandon"]]
    )

    # Inactive days: only notifications can still be dismissed (and nothing at all after churn but
    # a rare stray dismissal); promotions, friends leaving and device context are scheduled below.
    act_hist = active[:, :D]
    alive_d = alive[:, :D]
    notif = notif0[:, None] & ~(
        warned[:, None]
        & (u[:, 32] < dec.notifications_off_prob)[:, None]
        & (t_idx[:, :D] >= win_start[:, None])
    )
    dismiss = rates[:, :, c["notification_dismissed"]]
    dismiss = np.where(act_hist, dismiss, np.where(alive_d, 0.25, chn.stray_event_rate))
    dismiss = np.where(notif | act_hist, dismiss, 0.0)
    dismiss = np.where(t_idx[:, :D] >= s0[:, None], dismiss, 0.0)
    rates[:, :, c["notification_dismissed"]] = 0.0
    rates *= act_hist[:, :, None]
    rates[:, :, c["notification_dismissed"]] = dismiss

    n_h = (N_STOCH + 3) // 4
    h_s = _hash(key, (103 << 24) + 1 + np.arange(D * n_h, dtype=np.int64)).reshape(B, D, n_h, 1)
    lanes = ((h_s >> _LANE_SHIFTS) & _U(0xFFFF)).reshape(B, D, 4 * n_h)[:, :, :N_STOCH]
    counts = np.zeros((B, D, K), dtype=np.int32)
    rates += (lanes + 0.5) * (1.0 / 65536.0)  # stochastic rounding: floor(rate + u) has mean rate
    np.minimum(rates, _MAX_PER_CELL, out=rates)
    counts[:, :, :N_STOCH] = rates  # truncation = floor for non-negative values

    # Sessions per active day (1-3) and the derived / scheduled channels.
    extra = _EXTRA_SESSIONS[seg][:, None] * Ld * mood * gen_w[:, :D]
    n_sess = np.where(act_hist, 1 + np.minimum(np.floor(extra + u_nsess), 2), 0).astype(np.int64)
    counts[:, :, c["session"]] = n_sess
    counts[:, :, c["ticket_resolved"]] = np.where(u_tick < 0.7, counts[:, :, c["ticket_opened"]], 0)
    counts[:, :, c["checkout"]] = counts[:, :, c["purchase"]]
    counts[:, :, c["coupon_redeemed"]] = np.where(disc_d & (u_coupon < 0.7), counts[:, :, c["purchase"]], 0)
    td = t_idx[:, :D]
    for j in range(Kp):
        counts[:, :, c["discount_started"]] += p_ok[:, j, None] & (td == p_start[:, j, None])
        counts[:, :, c["discount_ended"]] += p_ok[:, j, None] & (td == p_end[:, j, None])
    counts[:, :, c["discount_started"]] *= alive_d
    counts[:, :, c["discount_ended"]] *= alive_d
    counts[:, :, c["friends_initial"]] = (td == s0[:, None]) & (friends0[:, None] > 0)
    fr_k = td - fr_start[:, None]
    counts[:, :, c["friends_episode"]] = fr_on[:, :D] & alive_d
    fr_val = np.floor(fr_total / fr_days)[:, None] + (
        fr_k < (fr_total - np.floor(fr_total / fr_days) * fr_days)[:, None]
    )
    first = td == s0[:, None]
    refresh = first | (((td - s0[:, None]) % 30 == 29) & alive_d)
    for name in ("device_tier", "registration_channel"):
        counts[:, :, c[name]] = refresh
    apps_d = apps[:, :D]
    apps_change = np.concatenate([np.zeros((B, 1), dtype=bool), apps_d[:, 1:] != apps_d[:, :-1]], axis=1)
    counts[:, :, c["same_category_apps"]] = (refresh | apps_change) & alive_d
    notif_change = np.concatenate([np.zeros((B, 1), dtype=bool), notif[:, 1:] != notif[:, :-1]], axis=1)
    counts[:, :, c["notifications_enabled"]] = (refresh | notif_change) & alive_d
    counts *= (td >= s0[:, None])[:, :, None]

    # ---- expand to events -------------------------------------------------------------------
    flat = counts.reshape(-1)
    nz = np.flatnonzero(flat)
    cnt = flat[nz].astype(np.int64)
    n_ev = int(cnt.sum())
    which = np.repeat(np.arange(nz.size, dtype=np.int64), cnt)
    cell = nz[which]
    rank = np.arange(n_ev, dtype=np.int64) - (np.cumsum(cnt) - cnt)[which]
    row = cell // K
    ch_ev = cell - row * K
    b_ev = row // D
    t_ev = row - b_ev * D
    h_e = _mix(key[b_ev] + (_EVENT_STREAM + ((t_ev * K + ch_ev) << 8) + rank).astype(np.uint64) * _GOLDEN)
    u_time, u_val = _lanes32(h_e)
    u_pick = (((h_e >> _U(16)) & _U(0xFFFF)).astype(np.float64) + 0.5) * (1.0 / 65536.0)

    # Sessions: up to 3 per day around the device's habit hour; durations shrink before churn.
    h_t = _day_hash(key, 104, D)
    h_u = _day_hash(key, 105, D)
    su = _lanes16(h_t)[:3]
    du = _lanes16(h_u)[:3]
    start_s = np.stack(
        [
            np.floor((habit[:, None] + (x - 0.5) * 2.0 * spread[:, None]) * 3600.0).astype(np.int64)
            % SECONDS_PER_DAY
            for x in su
        ],
        axis=2,
    )
    start_s = np.where(
        np.arange(3)[None, None, :] < np.maximum(n_sess, 1)[:, :, None], start_s, SECONDS_PER_DAY
    )
    start_s = np.sort(start_s, axis=2)
    dur_base = (_SESSION_SECONDS[seg][:, None] * (0.4 + 0.6 * Ld) * gen_w[:, :D])[:, :, None]
    dur = np.clip(np.floor(dur_base * (0.3 + 1.4 * np.stack(du, axis=2))), 10, 10_800).astype(np.int64)
    dur = np.where(act_hist[:, :, None], dur, 300)
    start_s = np.minimum(start_s, SECONDS_PER_DAY - 1 - dur)
    ns_ev = np.maximum(n_sess.reshape(-1)[row], 1)
    is_sess = ch_ev == c["session"]
    s_ev = np.where(is_sess, rank, np.floor(u_pick * ns_ev).astype(np.int64))
    s_ev = np.minimum(s_ev, 2)
    start_ev = start_s.reshape(-1, 3)[row, s_ev]
    dur_ev = dur.reshape(-1, 3)[row, s_ev]
    sec = start_ev + np.where(is_sess, 0, np.floor(u_time * dur_ev).astype(np.int64))

    value = np.ones(n_ev, dtype=np.float64)
    value = np.where(is_sess, dur_ev.astype(np.float64), value)
    sel = ch_ev == c["content_viewed"]
    value = np.where(
        sel, np.maximum(np.floor(cmin.reshape(-1)[row] * (0.6 + 0.8 * u_val) * 10.0 + 0.5) / 10.0, 0.1), value
    )
    sel = ch_ev == c["purchase"]
    value = np.where(
        sel,
        np.floor(
            basket[b_ev] * np.where(disc_d.reshape(-1)[row], 0.85, 1.0) * (0.4 + 1.2 * u_val) * 100.0 + 0.5
        )
        / 100.0,
        value,
    )
    value = np.where(ch_ev == c["friend_added"], np.where(u_val < 0.3, 2.0, 1.0), value)
    value = np.where(ch_ev == c["friends_initial"], friends0[b_ev], value)
    value = np.where(ch_ev == c["friends_episode"], fr_val.reshape(-1)[row], value)
    value = np.where(ch_ev == c["device_tier"], tier[b_ev].astype(np.float64), value)
    value = np.where(ch_ev == c["registration_channel"], channel[b_ev].astype(np.float64), value)
    value = np.where(ch_ev == c["same_category_apps"], apps_d.reshape(-1)[row], value)
    value = np.where(ch_ev == c["notifications_enabled"], notif.reshape(-1)[row].astype(np.float64), value)

    order = np.argsort(row * (1 << 17) + sec, kind="stable")
    b_ev = b_ev[order]
    t_o = t_ev[order]
    events = {
        "device": devices.astype(np.int64)[b_ev],
        "ts": (sc.start_day + t_o) * SECONDS_PER_DAY - tz[b_ev] * 60 + sec[order],
        "tz_min": tz[b_ev].astype(np.int16),
        "cat": _CH_CAT[ch_ev[order]],
        "action": _CH_ACT[ch_ev[order]],
        "value": value[order],
    }
    per_device = np.bincount(b_ev, minlength=B)

    # ---- ground truth -----------------------------------------------------------------------
    visible = qv & (qs < D)
    truth = {
        "device": devices.astype(np.int64),
        "segment": seg.astype(np.int8),
        "churn_day": np.where(churned, sc.start_day + churn, -1).astype(np.int64),
        "churn_observed": churned & (churn + 14 <= D),
        "cause": cause.astype(np.int8),
        "no_warning": churned & nw_flag,
        "start_day": (sc.start_day + s0).astype(np.int64),
        "today": np.full(B, sc.start_day + D - 1, dtype=np.int64),
        "tz_min": tz.astype(np.int16),
        "new_user": new_user,
        "night_user": night,
        "engagement": level,
        "device_tier": tier.astype(np.int8),
        "registration_channel": channel.astype(np.int8),
        "friends_lost_share": np.where(fr_ok & (fr_start < np.minimum(churn, D)), fr_phi, 0.0),
        "quiet_kind": np.where(visible, qk[None, :], -1).astype(np.int8),
        "quiet_start": np.where(visible, sc.start_day + qs, -1).astype(np.int64),
        "quiet_end": np.where(visible, sc.start_day + qe, -1).astype(np.int64),
    }
    return events, truth, per_device


def _iso_day(iso: str) -> int:
    import datetime as dt

    return (dt.date.fromisoformat(iso) - dt.date(1970, 1, 1)).days


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def _check_ids(seed: int, devices: Array) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if devices.size and (int(devices.min()) < 0):
        raise ValueError("device numbers must be >= 0")


def generate_device(seed: int, device: int, scenario: Scenario, days: int | None = None) -> DeviceHistory:
    """History of one device: a pure function of (seed, device, scenario with `days` applied)."""
    sc = scenario.with_days(days)
    devs = np.array([device], dtype=np.int64)
    _check_ids(seed, devs)
    ev, truth, _ = _simulate(seed, devs, sc)
    return DeviceHistory(device=device, events=to_event_array(ev), truth=_truth_row(truth, 0))


def generate_devices(
    seed: int, devices: Array, scenario: Scenario, days: int | None = None, chunk: int = 512
) -> tuple[Array, Array, Array, Array]:
    """Histories of any set of devices with the population's batch path (what a simulation shard
    generates on first use): (events EVENT_DTYPE sorted by device then ts, each event's row in
    `devices`, start days, todays). Each device's history is `generate_device`'s."""
    events, rows, truth = generate_devices_with_truth(seed, devices, scenario, days, chunk)
    return events, rows, truth["start_day"], truth["today"]


def generate_devices_with_truth(
    seed: int, devices: Array, scenario: Scenario, days: int | None = None, chunk: int = 512
) -> tuple[Array, Array, dict[str, Array]]:
    """`generate_devices` with the truth columns (`TRUTH_COLUMNS`) kept: what a lab that needs
    each device's latent outcome (the what-if lab) generates."""
    sc = scenario.with_days(days)
    devs = np.asarray(devices, dtype=np.int64)
    _check_ids(seed, devs)
    parts, rows, truths = [], [], []
    for a in range(0, len(devs), chunk):
        block = devs[a : a + chunk]
        ev, truth, per_dev = _simulate(seed, block, sc)
        parts.append(to_event_array(ev))
        rows.append(np.repeat(np.arange(a, a + len(block), dtype=np.int64), per_dev))
        truths.append(truth)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return np.empty(0, dtype=EVENT_DTYPE), empty, _empty_truth(sc)
    truth_cols = {k: np.concatenate([t[k] for t in truths]) for k in truths[0]}
    truth_cols["start_day"] = truth_cols["start_day"].astype(np.int64)
    truth_cols["today"] = truth_cols["today"].astype(np.int64)
    return np.concatenate(parts), np.concatenate(rows), truth_cols


def to_event_array(columns: dict[str, Array], rows: slice = slice(None)) -> Array:
    """Event columns (plus any extra ones, such as `device`) -> an EVENT_DTYPE array."""
    n = len(columns["ts"][rows])
    out = np.empty(n, dtype=EVENT_DTYPE)
    for name in EVENT_DTYPE.names or ():
        out[name] = columns[name][rows]
    return out


def _simulate_range(seed: int, lo: int, hi: int, sc: Scenario, chunk: int) -> tuple[dict, dict, Array]:
    """Devices lo..hi-1 in vectorised blocks of `chunk` (a worker's unit of work)."""
    ev_parts: dict[str, list[Array]] = {}
    tr_parts: dict[str, list[Array]] = {}
    counts: list[Array] = []
    for a in range(lo, hi, chunk):
        ev, truth, per_dev = _simulate(seed, np.arange(a, min(hi, a + chunk), dtype=np.int64), sc)
        for k_, v in ev.items():
            ev_parts.setdefault(k_, []).append(v)
        for k_, v in truth.items():
            tr_parts.setdefault(k_, []).append(v)
        counts.append(per_dev)
    return (
        {k_: np.concatenate(v) for k_, v in ev_parts.items()},
        {k_: np.concatenate(v) for k_, v in tr_parts.items()},
        np.concatenate(counts),
    )


# Populations of at least this many devices are generated in worker processes (`default_workers`).
PARALLEL_FROM = 16_384


def default_workers(n_devices: int) -> int:
    """Processes worth starting: one per core for big populations, none for small ones."""
    if n_devices < PARALLEL_FROM:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def generate_population(
    n_devices: int,
    seed: int,
    scenario: Scenario,
    days: int | None = None,
    progress: ProgressFn | None = None,
    chunk: int = 512,
    workers: int | None = None,
) -> Population:
    """Devices 0..n-1, generated in vectorised blocks; device i equals `generate_device(seed, i, ...)`.

    With `workers` > 1 the blocks are spread over processes; the output does not depend on it.
    """
    sc = scenario.with_days(days)
    if n_devices < 0:
        raise ValueError("n_devices must be >= 0")
    _check_ids(seed, np.zeros(0, dtype=np.int64))
    n_workers = default_workers(n_devices) if workers is None else max(1, workers)
    task = chunk * 8 if n_workers > 1 else chunk
    ranges = [(lo, min(n_devices, lo + task)) for lo in range(0, n_devices, task)]
    results = map_blocks(partial(_simulate_range, seed, sc=sc, chunk=chunk), ranges, n_workers, progress)
    events: dict[str, Array] = {}
    for k_, dtype in _EVENT_COLUMN_DTYPES.items():
        parts = [r[0].pop(k_) for r in results]
        events[k_] = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        del parts
    truth_cols = (
        {k_: np.concatenate([r[1][k_] for r in results]) for k_ in results[0][1]}
        if results
        else _empty_truth(sc)
    )
    per_device = np.concatenate([r[2] for r in results]) if results else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(per_device)]).astype(np.int64)
    return Population(seed, sc, n_devices, sc.days, events, truth_cols, offsets)


_EVENT_COLUMN_DTYPES = {"device": np.dtype(np.int64), **{n: EVENT_DTYPE[n] for n in EVENT_DTYPE.names or ()}}


def _empty_truth(sc: Scenario) -> dict[str, Array]:
    _, truth, _ = _simulate(0, np.zeros(0, dtype=np.int64), sc)
    return truth


# ---------------------------------------------------------------------------------------------
# Parquet output (byte-identical for the same inputs)
# ---------------------------------------------------------------------------------------------
CATEGORY_DICTIONARY: tuple[str, ...] = CATEGORY_IDS
ACTION_DICTIONARY: tuple[str, ...] = tuple(a.name for cat in CATEGORIES for a in cat.actions)
_ACTION_OFFSET = np.cumsum([0] + [len(cat.actions) for cat in CATEGORIES[:-1]]).astype(np.int16)


def events_table(pop: Population) -> Any:
    """The events as a pyarrow Table (category and action dictionary-encoded)."""
    import pyarrow as pa

    ev = pop.events
    cat_idx = ev["cat"].astype(np.int8)
    act_idx = (_ACTION_OFFSET[ev["cat"]] + ev["action"]).astype(np.int8)
    return pa.table(
        {
            "device": pa.array(ev["device"], type=pa.int64()),
            "ts": pa.array(ev["ts"], type=pa.int64()),
            "tz_min": pa.array(ev["tz_min"], type=pa.int16()),
            "category": pa.DictionaryArray.from_arrays(
                pa.array(cat_idx), pa.array(list(CATEGORY_DICTIONARY))
            ),
            "action": pa.DictionaryArray.from_arrays(pa.array(act_idx), pa.array(list(ACTION_DICTIONARY))),
            "value": pa.array(ev["value"], type=pa.float64()),
        }
    )


def truth_table(pop: Population) -> Any:
    """Ground truth as a pyarrow Table: one row per device, labels as strings, quiet spells as lists."""
    import pyarrow as pa

    tr = pop.truth
    cols: dict[str, Any] = {}
    for name, arr in tr.items():
        if name == "segment":
            cols[name] = pa.DictionaryArray.from_arrays(
                pa.array(arr.astype(np.int8)), pa.array(list(SEGMENTS))
            )
        elif name == "cause":
            cols[name] = pa.DictionaryArray.from_arrays(pa.array(arr.astype(np.int8)), pa.array(list(CAUSES)))
        elif name == "churn_day":
            cols[name] = pa.array(arr, mask=arr < 0, type=pa.int64())
        elif name.startswith("quiet_"):
            continue
        else:
            cols[name] = pa.array(arr)
    kinds, starts, ends = tr["quiet_kind"], tr["quiet_start"], tr["quiet_end"]
    ok = kinds >= 0
    n_per = ok.sum(axis=1)
    off = pa.array(np.concatenate([[0], np.cumsum(n_per)]).astype(np.int32))
    kind_vals = pa.DictionaryArray.from_arrays(
        pa.array(kinds[ok].astype(np.int8)), pa.array(list(QUIET_KINDS))
    )
    cols["quiet_kind"] = pa.ListArray.from_arrays(off, kind_vals)
    cols["quiet_start"] = pa.ListArray.from_arrays(off, pa.array(starts[ok], type=pa.int64()))
    cols["quiet_end"] = pa.ListArray.from_arrays(off, pa.array(ends[ok], type=pa.int64()))
    return pa.table(cols)


def write_population(pop: Population, out_dir: Path) -> dict[str, Path]:
    """Write events.parquet, truth.parquet and scenario.json; the same population gives the same bytes."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A calibration report of the population this one replaces would sit beside data it does not
    # describe (review 23): it goes with the data it was made from.
    if (out_dir / "report" / "calibration.json").is_file():
        shutil.rmtree(out_dir / "report")
    paths = {
        "events": out_dir / "events.parquet",
        "truth": out_dir / "truth.parquet",
        "scenario": out_dir / "scenario.json",
    }
    opts: dict[str, Any] = {
        "compression": "zstd",
        "compression_level": 3,
        "use_dictionary": True,
        "write_statistics": True,
        "row_group_size": 1 << 20,
        "store_schema": True,
    }
    pq.write_table(events_table(pop), paths["events"], **opts)
    pq.write_table(truth_table(pop), paths["truth"], **opts)
    meta = {
        "seed": pop.seed,
        "n_devices": pop.n_devices,
        "days": pop.days,
        "n_events": pop.n_events,
        "start_day": pop.scenario.start_day,
        "today": pop.scenario.start_day + pop.days - 1,
        "segments": list(SEGMENTS),
        "causes": list(CAUSES),
        "truth_columns": TRUTH_COLUMNS,
        "scenario": pop.scenario.to_dict(),
    }
    paths["scenario"].write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return paths
