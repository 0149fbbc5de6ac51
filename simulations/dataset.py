"""A whole population as arrays: features, local labels and the held-out split, in one pass.

The simulation runner needs the same examples the devices build for themselves (for the
central baselines and as a check of the federated evaluation). It runs the device code
(`client.device_data`) in batch over all devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedchurn.client.device_data import iter_devices
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
    """Examples for every device, through the devices' own path (`client.device_data`); held-out
    devices give their evaluation row, the others their last training rows."""
    tr: tuple[list[np.ndarray], ...] = ([], [], [], [])
    te: tuple[list[np.ndarray], ...] = ([], [], [], [])
    for i, d in enumerate(iter_devices(events, device, start_day, today, cfg.protocol(), chunk)):
        if is_eval_device(cfg.seed, i, cfg.eval_fraction):
            if d.eval_x is not None:
                for lst, v in zip(te, (d.eval_x[None], [d.eval_time], [d.eval_event], [i]), strict=True):
                    lst.append(np.asarray(v))
            continue
        k = max(len(d.time) - max_train_rows_per_device, 0)
        if len(d.time) > k:
            for lst, v in zip(
                tr, (d.x[k:], d.time[k:], d.event[k:], np.full(len(d.time) - k, i)), strict=True
            ):
                lst.append(np.asarray(v))
    return Dataset(train=_examples(*tr), test=_examples(*te), n_devices=len(start_day))
