"""Events -> per-day aggregates: one row per local day, one column per `feature_spec.CHANNELS` entry.

The same function serves one device (a phone) and a whole simulated population (a batch with
a device column), so the simulation exercises exactly the code a device runs.
"""

from __future__ import annotations

import numpy as np

from fedchurn.shared.catalogue import BY_ID, CATEGORIES
from fedchurn.shared.events import local_day, local_hour
from fedchurn.shared.feature_spec import BEHAVIOUR, CHANNELS, NIGHT_HOURS

N_CHANNELS = len(CHANNELS)
_DEVICE_CONTEXT = BY_ID["device_context"].number - 1


def _selects(cat_col: np.ndarray, action_col: np.ndarray, cat: str, actions: tuple[str, ...]) -> np.ndarray:
    if cat == BEHAVIOUR:
        return np.asarray(cat_col != _DEVICE_CONTEXT)
    c = BY_ID[cat]
    mask = cat_col == c.number - 1
    if actions:
        names = c.action_names()
        hit = np.zeros(len(action_col), dtype=bool)
        for a in actions:  # a handful of codes: equality beats np.isin's set machinery
            hit |= action_col == names.index(a)
        mask &= hit
    return np.asarray(mask)


def daily_aggregates_batch(
    events: np.ndarray, device: np.ndarray | None, n_devices: int, start_day: int, n_days: int
) -> np.ndarray:
    """Aggregate events of many devices into an (n_devices, n_days, N_CHANNELS) float64 array.

    `device` gives each event's row (0..n_devices-1); events outside the day range are ignored.
    Count and sum channels are 0 on days without events; "last" channels are NaN there.
    """
    day = local_day(events["ts"], events["tz_min"]) - start_day
    dev = np.zeros(len(events), dtype=np.int64) if device is None else np.asarray(device, dtype=np.int64)
    keep = (day >= 0) & (day < n_days) & (dev >= 0) & (dev < n_devices)
    ev, day, dev = events[keep], day[keep], dev[keep]
    cell = dev * n_days + day
    size = n_devices * n_days
    out = np.zeros((size, N_CHANNELS), dtype=np.float64)

    # All per-category counts in one pass.
    n_cat = len(CATEGORIES)
    counts = np.bincount(cell * n_cat + ev["cat"], minlength=size * n_cat).reshape(size, n_cat)
    out[:, :n_cat] = counts
    night = None
    # Contiguous columns once: every channel below compares them again.
    cat_col, action_col = np.ascontiguousarray(ev["cat"]), np.ascontiguousarray(ev["action"])
    for j, ch in enumerate(CHANNELS[n_cat:], start=n_cat):
        sel = _selects(cat_col, action_col, ch.category, ch.actions)
        if ch.night_only:
            if night is None:
                hour = local_hour(ev["ts"], ev["tz_min"])
                night = (hour >= NIGHT_HOURS[0]) & (hour < NIGHT_HOURS[1])
            sel = sel & night
        if ch.stat == "count":
            out[:, j] = np.bincount(cell[sel], minlength=size)
        elif ch.stat == "sum":
            out[:, j] = np.bincount(cell[sel], weights=ev["value"][sel], minlength=size) * ch.scale
        else:  # "last": the latest event of the day wins (ties: the later one in the input)
            col = np.full(size, np.nan)
            idx = np.flatnonzero(sel)
            if idx.size:
                order = np.lexsort((idx, ev["ts"][idx], cell[idx]))
                ordered = idx[order]
                cells = cell[ordered]
                last = np.ones(len(ordered), dtype=bool)
                last[:-1] = cells[1:] != cells[:-1]
                col[cells[last]] = ev["value"][ordered[last]] * ch.scale
            out[:, j] = col
    return out.reshape(n_devices, n_days, N_CHANNELS)


def daily_aggregates(events: np.ndarray, start_day: int, end_day: int) -> np.ndarray:
    """One device's aggregates for local days start_day..end_day inclusive: (days, N_CHANNELS)."""
    n_days = end_day - start_day + 1
    if n_days <= 0:
        raise ValueError(f"end_day {end_day} is before start_day {start_day}")
    return daily_aggregates_batch(events, None, 1, start_day, n_days)[0]


def history_days(
    events: np.ndarray, first_day: int | None = None, today: int | None = None
) -> tuple[int, int]:
    """The day range a device's features cover: its first day of history up to today."""
    days = local_day(events["ts"], events["tz_min"]) if len(events) else np.array([], dtype=np.int64)
    start = first_day if first_day is not None else (int(days.min()) if days.size else None)
    end = today if today is not None else (int(days.max()) if days.size else None)
    if start is None or end is None:
        raise ValueError("no events and no day range given")
    return start, max(start, end)
