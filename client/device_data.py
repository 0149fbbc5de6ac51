"""A device's training and evaluation examples, built from its own events on the device.

`prepare_devices` is the batch path (a simulation shard prepares thousands of devices at once);
`prepare_device` is the same code with one device, what a phone runs. Both keep only what a
device needs round after round: its labelled training rows and its evaluation row, not every
day's feature vector (about half the memory, which is what lets a simulation node keep its shard).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fedchurn.client.aggregates import daily_aggregates_batch, history_days
from fedchurn.client.features import extract_features
from fedchurn.client.labels import (
    activity_from_daily,
    recently_active,
    survival_labels,
    to_bins,
    window_labels,
)
from fedchurn.shared.protocol import ROW_STRIDE, Protocol

__all__ = ["DeviceData", "iter_devices", "prepare_device", "prepare_devices"]

ROLLING = Protocol()


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


def iter_devices(
    events: np.ndarray,
    device: np.ndarray,
    first_days: Sequence[int] | np.ndarray,
    todays: Sequence[int] | np.ndarray,
    protocol: Protocol = ROLLING,
    chunk: int = 250,
) -> Iterator[DeviceData]:
    """Features for every day, the protocol's labels and the evaluation row of many devices, one
    device at a time in row order (a caller keeps what it needs; `prepare_devices` keeps all).

    `device` gives each event's row (0..n-1); `first_days` / `todays` each device's first and last
    local day. Under the rolling protocol the evaluation day is the last day whose outcome is fully
    known (today - horizon - silence_days + 1, so a churn starting on its last horizon day is
    confirmed by today) and training rows are the usable days strictly before it, so a device's
    evaluation outcome never leaks into its own training labels. Under the cutoff protocol the
    evaluation day is the cutoff and training rows are every `ROW_STRIDE`-th day from cutoff -
    horizon back (their outcomes end by the cutoff). See `shared.protocol`.
    """
    first = np.asarray(first_days, dtype=np.int64)
    last = np.asarray(todays, dtype=np.int64)
    n = len(first)
    order = np.argsort(device, kind="stable")
    events, device = events[order], np.asarray(device)[order]
    bounds = np.searchsorted(device, np.arange(0, n + chunk, chunk))
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        lo, hi = int(bounds[c0 // chunk]), int(bounds[c0 // chunk + 1])
        start, end = int(first[c0:c1].min()), int(last[c0:c1].max())
        days = np.arange(start, end + 1, dtype=np.int64)
        daily = daily_aggregates_batch(events[lo:hi], device[lo:hi] - c0, c1 - c0, start, len(days))
        feats = extract_features(daily, days, first[c0:c1], protocol.n_features)
        active = activity_from_daily(daily, protocol.activity)
        for j in range(c1 - c0):
            a, b = int(first[c0 + j]) - start, int(last[c0 + j]) - start
            yield _device(feats[j, a : b + 1], active[j, a : b + 1], int(first[c0 + j]), protocol)


def _device(f: np.ndarray, active: np.ndarray, first_day: int, protocol: Protocol) -> DeviceData:
    """One device's rows from its features and activity over its days (first_day .. today)."""
    D = len(active)
    if protocol.cutoff_day is None:
        lab = to_bins(
            survival_labels(active, horizon=protocol.horizon, silence_days=protocol.silence_days),
            protocol.bin_days,
            protocol.horizon,
        )
        ev = D - 1 - protocol.lag
        candidates = np.arange(max(ev, 0))
    else:
        lab = window_labels(active, protocol.horizon)
        ev = protocol.cutoff_day - first_day
        top = ev - protocol.horizon
        # A device whose log ends before the cutoff (its today < T) has fewer days than T's
        # index: its rows stop at its own last day.
        last_row = min(top, D - 1)
        candidates = np.arange(top % ROW_STRIDE, last_row + 1, ROW_STRIDE) if top >= 0 else np.arange(0)
    usable = lab.usable
    if protocol.population_days is not None:
        usable = usable & recently_active(active, protocol.population_days)
    rows = candidates[usable[candidates]]
    has_eval = 0 <= ev < D and bool(usable[ev])
    return DeviceData(
        x=np.ascontiguousarray(f[rows], dtype=np.float32),
        time=lab.time[rows].astype(np.int64),
        event=lab.event[rows].astype(bool),
        eval_x=np.array(f[ev], dtype=np.float32) if has_eval else None,
        eval_time=int(lab.time[ev]) if has_eval else 0,
        eval_event=bool(lab.event[ev]) if has_eval else False,
    )


def prepare_devices(
    events: np.ndarray,
    device: np.ndarray,
    first_days: Sequence[int] | np.ndarray,
    todays: Sequence[int] | np.ndarray,
    protocol: Protocol = ROLLING,
    chunk: int = 250,
) -> list[DeviceData]:
    """Every device of `iter_devices`, kept."""
    return list(iter_devices(events, device, first_days, todays, protocol, chunk))


def prepare_device(
    events: np.ndarray,
    first_day: int | None = None,
    today: int | None = None,
    protocol: Protocol = ROLLING,
) -> DeviceData:
    """One device: `prepare_devices` with a batch of one (a phone's path)."""
    start, end = history_days(events, first_day, today)
    (data,) = prepare_devices(events, np.zeros(len(events), dtype=np.int64), [start], [end], protocol)
    return data
