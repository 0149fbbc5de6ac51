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

__all__ = ["DeviceData", "iter_devices", "prepare_device", "prepare_devices", "span_groups"]

ROLLING = Protocol()
SPAN_WASTE = 2  # a group of devices is built over at most twice the days its devices own


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
    local day. Devices are prepared `chunk` rows at a time, each chunk in `span_groups` (so the
    work follows the days each device owns), and come out in row order.

    Under the rolling protocol the evaluation day is the last day whose outcome is fully known
    (today - horizon - silence_days + 1, so a churn starting on its last horizon day is
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
        ev, row = events[lo:hi], device[lo:hi] - c0
        groups = span_groups(first[c0:c1], last[c0:c1])
        group_of = np.empty(c1 - c0, dtype=np.int64)
        place = np.empty(c1 - c0, dtype=np.int64)  # a device's row within its group
        for g, members in enumerate(groups):
            group_of[members], place[members] = g, np.arange(len(members))
        by_group = np.argsort(group_of[row], kind="stable")
        ev, row = ev[by_group], row[by_group]
        cuts = np.searchsorted(group_of[row], np.arange(len(groups) + 1))
        done: list[DeviceData | None] = [None] * (c1 - c0)
        for g, members in enumerate(groups):
            f, t = first[c0 + members], last[c0 + members]
            start, end = int(f.min()), int(t.max())
            days = np.arange(start, end + 1, dtype=np.int64)
            e0, e1 = int(cuts[g]), int(cuts[g + 1])
            daily = daily_aggregates_batch(ev[e0:e1], place[row[e0:e1]], len(members), start, len(days))
            feats = extract_features(daily, days, f, protocol.n_features)
            active = activity_from_daily(daily, protocol.activity)
            for j, m in enumerate(members):
                a, b = int(f[j]) - start, int(t[j]) - start
                done[m] = _device(feats[j, a : b + 1], active[j, a : b + 1], int(f[j]), protocol)
        for data in done:
            assert data is not None  # every device of the chunk is in one group
            yield data


def span_groups(first: np.ndarray, last: np.ndarray) -> list[np.ndarray]:
    """Indices of the devices (first / last day each) in groups whose one range of days, from the
    group's first day to its last, costs at most `SPAN_WASTE` times the days its devices own.

    Features are built for a group over one range of days. Over the whole batch, one old account
    (or an event dated 1970 by a reset clock) made every device cost its age, in time and memory,
    and a node's reply time then showed that age (review 12, decision 149). Devices are taken
    oldest first, and one joins the current group while the group's range stays within the bound:
    a batch's work follows the days each device owns, not the oldest one's."""
    own = np.maximum(last - first + 1, 1)
    groups: list[np.ndarray] = []
    members: list[int] = []
    lo = hi = owned = 0
    for i in np.lexsort((last, first)).tolist():
        if members:
            top = max(hi, int(last[i]))
            if (len(members) + 1) * max(top - lo + 1, 1) <= SPAN_WASTE * (owned + int(own[i])):
                members.append(i)
                hi, owned = top, owned + int(own[i])
                continue
            groups.append(np.asarray(members, dtype=np.int64))
        members, lo, hi, owned = [i], int(first[i]), int(last[i]), int(own[i])
    if members:
        groups.append(np.asarray(members, dtype=np.int64))
    return groups


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
