"""A device's training and evaluation examples, built from its own events on the device.

`prepare_devices` is the batch path (a simulation shard prepares thousands of devices at once);
`prepare_device` is the same code with one device, what a phone runs. Both keep only what a
device needs round after round: its labelled training rows and its evaluation row, not every
day's feature vector (about half the memory, which is what lets a simulation node keep its shard).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedchurn.client.aggregates import daily_aggregates_batch, history_days
from fedchurn.client.features import extract_features
from fedchurn.client.labels import activity_from_daily, survival_labels
from fedchurn.shared.feature_spec import N_FEATURES

__all__ = ["DeviceData", "prepare_device", "prepare_devices"]


@dataclass(frozen=True)
class DeviceData:
    x: np.ndarray  # (n, F) float32: the labelled training days, oldest first
    time: np.ndarray  # (n,) int64: event day (1..H) or censoring day
    event: np.ndarray  # (n,) bool
    eval_x: np.ndarray | None  # (F,) the evaluation day's features (None: no day's outcome is known)
    eval_time: int = 0
    eval_event: bool = False

    def training_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x, self.time, self.event

    @property
    def nbytes(self) -> int:
        extra = 0 if self.eval_x is None else self.eval_x.nbytes
        return int(self.x.nbytes + self.time.nbytes + self.event.nbytes + extra)


def prepare_devices(
    events: np.ndarray,
    device: np.ndarray,
    first_days: Sequence[int] | np.ndarray,
    todays: Sequence[int] | np.ndarray,
    horizon: int = 14,
    silence_days: int = 14,
    activity: tuple[str, ...] = ("sessions",),
    chunk: int = 250,
) -> list[DeviceData]:
    """Features for every day, local survival labels and the evaluation day of many devices.

    `device` gives each event's row (0..n-1); `first_days` / `todays` each device's first and last
    local day. The evaluation day is the last day whose outcome is fully known: today - horizon -
    silence_days + 1, so that a churn starting on its last horizon day is confirmed by today.
    Training examples are the usable days strictly before it, so that a device's evaluation
    outcome never leaks into its own training labels.
    """
    first = np.asarray(first_days, dtype=np.int64)
    last = np.asarray(todays, dtype=np.int64)
    n = len(first)
    order = np.argsort(device, kind="stable")
    events, device = events[order], np.asarray(device)[order]
    bounds = np.searchsorted(device, np.arange(0, n + chunk, chunk))
    lag = horizon + silence_days - 1
    out: list[DeviceData] = []
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        lo, hi = int(bounds[c0 // chunk]), int(bounds[c0 // chunk + 1])
        start, end = int(first[c0:c1].min()), int(last[c0:c1].max())
        days = np.arange(start, end + 1, dtype=np.int64)
        daily = daily_aggregates_batch(events[lo:hi], device[lo:hi] - c0, c1 - c0, start, len(days))
        feats = extract_features(daily, days, first[c0:c1])
        active = activity_from_daily(daily, activity)
        for j in range(c1 - c0):
            a, b = int(first[c0 + j]) - start, int(last[c0 + j]) - start
            lab = survival_labels(active[j, a : b + 1], horizon=horizon, silence_days=silence_days)
            f = feats[j, a : b + 1]
            ev = len(f) - 1 - lag
            rows = np.flatnonzero(lab.usable[: max(ev, 0)])
            has_eval = ev >= 0 and bool(lab.usable[ev])
            out.append(
                DeviceData(
                    x=np.ascontiguousarray(f[rows], dtype=np.float32),
                    time=lab.time[rows].astype(np.int64),
                    event=lab.event[rows].astype(bool),
                    eval_x=np.array(f[ev], dtype=np.float32) if has_eval else None,
                    eval_time=int(lab.time[ev]) if has_eval else 0,
                    eval_event=bool(lab.event[ev]) if has_eval else False,
                )
            )
    return out


def prepare_device(
    events: np.ndarray,
    first_day: int | None = None,
    today: int | None = None,
    horizon: int = 14,
    silence_days: int = 14,
    activity: tuple[str, ...] = ("sessions",),
) -> DeviceData:
    """One device: `prepare_devices` with a batch of one (a phone's path)."""
    start, end = history_days(events, first_day, today)
    (data,) = prepare_devices(
        events, np.zeros(len(events), dtype=np.int64), [start], [end], horizon, silence_days, activity
    )
    return data


EMPTY = DeviceData(np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), None)
