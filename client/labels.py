"""Local survival labels: each device labels its own history, so no label ever leaves it.

For a day t (features up to t), the time to churn T is the first s in 1..H such that day t+s
lies in a churn-length silence (a run of at least `silence_days` days without activity). T is
known once that run has lasted `silence_days` days by today; when a day's fate is not yet known,
the example is censored at the last day known to be outside such a silence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedchurn.shared.catalogue import CATEGORY_IDS
from fedchurn.shared.feature_spec import CHANNEL_INDEX

DEFAULT_SILENCE_DAYS = 14
DEFAULT_ACTIVITY = ("sessions",)


@dataclass(frozen=True)
class SurvivalLabels:
    time: np.ndarray  # (..., D) int: event day (1..H) or censoring day (0 = unusable)
    event: np.ndarray  # (..., D) bool
    usable: np.ndarray  # (..., D) bool: a training/evaluation example


def activity_from_daily(daily: np.ndarray, categories: tuple[str, ...] = DEFAULT_ACTIVITY) -> np.ndarray:
    """A day is active when any event of the activity categories happened (default: a session)."""
    unknown = [c for c in categories if c not in CATEGORY_IDS]
    if unknown:
        raise ValueError(f"unknown activity categories {unknown}; known: {', '.join(CATEGORY_IDS)}")
    cols = [CHANNEL_INDEX[f"count.{c}"] for c in categories]
    return np.asarray(daily[..., cols].sum(axis=-1) > 0)


def survival_labels(
    active: np.ndarray,
    valid: np.ndarray | None = None,
    horizon: int = 14,
    silence_days: int = DEFAULT_SILENCE_DAYS,
) -> SurvivalLabels:
    """Labels for every day of (..., D) activity flags; the last column is today."""
    active = np.asarray(active, dtype=bool)
    D = active.shape[-1]
    t = np.arange(D)
    big = 10 * (D + horizon + silence_days)
    # Days after today are unknown: pad so that t + s can be looked up for every s <= horizon.
    pad = np.zeros((*active.shape[:-1], horizon + 1), dtype=bool)
    act = np.concatenate([active, pad], axis=-1)
    days = np.arange(D + horizon + 1)
    beyond = days > D - 1
    rev = np.where(act & ~beyond, days, big)[..., ::-1]
    next_active = np.minimum.accumulate(rev, axis=-1)[..., ::-1]  # big: none up to today
    last_active = np.maximum.accumulate(np.where(act, days, -big), axis=-1)
    run_start = np.maximum(last_active + 1, 0)  # first day of the silence containing d
    confirmed = run_start + silence_days - 1 <= D - 1
    long_run = np.minimum(next_active, D) - run_start >= silence_days
    starts = ~act & ~beyond & confirmed & long_run  # d lies in a churn-length silence
    unknown = beyond | (~act & ~confirmed & (next_active >= big))
    time = np.zeros(active.shape, dtype=np.int64)
    event = np.zeros(active.shape, dtype=bool)
    done = np.zeros(active.shape, dtype=bool)
    for s in range(1, horizon + 1):
        d = t + s
        st, un = starts[..., d], unknown[..., d]
        hit = ~done & st
        time[hit], event[hit] = s, True
        stop = ~done & ~st & un  # cannot tell from day t+s on
        time[stop] = s - 1
        done |= hit | stop
    time[~done] = horizon
    # Already churned at t: no activity in the silence window ending at t.
    alive = t - last_active[..., :D] < silence_days
    usable = alive & (time >= 1)
    if valid is not None:
        usable &= np.asarray(valid, dtype=bool)
    return SurvivalLabels(time=time, event=event, usable=usable)


def window_labels(active: np.ndarray, horizon: int) -> SurvivalLabels:
    """The standard churn label for every day t of (..., D) activity flags (the last column is
    today): churned when there is no activity in (t, t + horizon]. Known when that window ends by
    today or holds an activity. One output bin: time is 1 for every usable day."""
    active = np.asarray(active, dtype=bool)
    D = active.shape[-1]
    t = np.arange(D)
    big = np.iinfo(np.int64).max // 4
    rev = np.where(active, t, big)[..., ::-1]
    next_on_or_after = np.minimum.accumulate(rev, axis=-1)[..., ::-1]
    next_after = np.concatenate([next_on_or_after[..., 1:], np.full((*active.shape[:-1], 1), big)], axis=-1)
    returned = next_after - t <= horizon
    known = returned | (t + horizon <= D - 1)
    return SurvivalLabels(time=known.astype(np.int64), event=known & ~returned, usable=known)


def recently_active(active: np.ndarray, days: int) -> np.ndarray:
    """Whether each day t has activity in the `days` days ending at t (the `active:N` population)."""
    c = np.cumsum(np.asarray(active, dtype=np.int64), axis=-1)
    before = np.concatenate([np.zeros((*c.shape[:-1], days), dtype=np.int64), c[..., :-days]], axis=-1)
    return np.asarray(c - before[..., : c.shape[-1]] > 0)


def to_bins(labels: SurvivalLabels, bin_days: int, horizon: int) -> SurvivalLabels:
    """Day-valued survival labels in bins of `bin_days`: an event on day s falls in bin
    ceil(s / bin_days); a day-s censoring has survived floor(s / bin_days) whole bins (all of them
    when s reaches the horizon). Rows with no whole bin known become unusable."""
    if bin_days == 1:
        return labels
    outputs = -(-horizon // bin_days)
    t = labels.time
    binned = np.where(labels.event, -(-t // bin_days), np.where(t >= horizon, outputs, t // bin_days))
    return SurvivalLabels(
        time=binned.astype(np.int64), event=labels.event, usable=labels.usable & (binned >= 1)
    )
