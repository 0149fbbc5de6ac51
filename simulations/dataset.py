"""A whole population as arrays: features, local labels and the held-out split, in one pass.

The simulation runner needs the same examples the devices build for themselves (for the
central baselines and as a check of the federated evaluation). It runs the device code
(`client.aggregates`, `client.features`, `client.labels`) in batch over all devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedchurn.client.aggregates import daily_aggregates_batch
from fedchurn.client.features import extract_features
from fedchurn.client.labels import activity_from_daily, survival_labels
from fedchurn.shared.run_config import RunConfig, is_eval_device


@dataclass
class Examples:
    x: np.ndarray  # (n, F)
    time: np.ndarray
    event: np.ndarray
    device: np.ndarray

    @property
    def churn(self) -> np.ndarray:
        """Binary label: churn starts within the horizon."""
        return self.event.astype(np.int64)


@dataclass
class Dataset:
    train: Examples
    test: Examples  # one row per held-out device: its evaluation day
    n_devices: int


def _examples(
    xs: list[np.ndarray], ts: list[np.ndarray], es: list[np.ndarray], ds: list[np.ndarray]
) -> Examples:
    if not xs:
        return Examples(
            np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64)
        )
    return Examples(np.concatenate(xs), np.concatenate(ts), np.concatenate(es), np.concatenate(ds))


def build_dataset(
    events: np.ndarray,
    device: np.ndarray,
    start_day: np.ndarray,
    today: np.ndarray,
    cfg: RunConfig,
    chunk: int = 250,
    max_train_rows_per_device: int = 120,
) -> Dataset:
    """Examples for every device; `start_day`/`today` are per-device local day numbers."""
    n = len(start_day)
    order = np.argsort(device, kind="stable")
    events, device = events[order], device[order]
    bounds = np.searchsorted(device, np.arange(0, n + chunk, chunk))
    tr: tuple[list[np.ndarray], ...] = ([], [], [], [])
    te: tuple[list[np.ndarray], ...] = ([], [], [], [])
    lag = cfg.horizon + cfg.silence_days - 1
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        lo, hi = bounds[c0 // chunk], bounds[c0 // chunk + 1]
        first = int(start_day[c0:c1].min())
        last = int(today[c0:c1].max())
        D = last - first + 1
        daily = daily_aggregates_batch(events[lo:hi], device[lo:hi] - c0, c1 - c0, first, D)
        days = np.arange(first, last + 1)
        feats = extract_features(daily, days, start_day[c0:c1])
        active = activity_from_daily(daily, cfg.activity_categories())
        for j in range(c1 - c0):
            i = c0 + j
            a, b = int(start_day[i]) - first, int(today[i]) - first
            lab = survival_labels(active[j, a : b + 1], horizon=cfg.horizon, silence_days=cfg.silence_days)
            f = feats[j, a : b + 1]
            ev = len(f) - 1 - lag
            if is_eval_device(cfg.seed, i, cfg.eval_fraction):
                if ev >= 0 and lab.usable[ev]:
                    for lst, v in zip(
                        te, (f[ev : ev + 1], lab.time[ev : ev + 1], lab.event[ev : ev + 1], [i]), strict=True
                    ):
                        lst.append(np.asarray(v))
                continue
            rows = np.flatnonzero(lab.usable[: max(ev, 0)])[-max_train_rows_per_device:]
            if rows.size:
                for lst, v in zip(
                    tr, (f[rows], lab.time[rows], lab.event[rows], np.full(rows.size, i)), strict=True
                ):
                    lst.append(np.asarray(v))
    return Dataset(train=_examples(*tr), test=_examples(*te), n_devices=n)
