"""One device's training and evaluation examples, built from its own events on the device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedchurn.client.labels import activity_from_daily, survival_labels
from fedchurn.client.pipeline import device_features


@dataclass(frozen=True)
class DeviceData:
    features: np.ndarray  # (D, F) one vector per day of history
    time: np.ndarray  # (D,)
    event: np.ndarray  # (D,)
    usable: np.ndarray  # (D,) labelled training examples
    eval_day: int | None  # row whose horizon is fully observed, for evaluation (None: none)

    def training_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.flatnonzero(self.usable)
        return self.features[idx], self.time[idx], self.event[idx]


def prepare_device(
    events: np.ndarray,
    first_day: int | None = None,
    today: int | None = None,
    horizon: int = 14,
    silence_days: int = 14,
    activity: tuple[str, ...] = ("sessions",),
) -> DeviceData:
    """Features for every day, local survival labels, and the evaluation day.

    The evaluation day is the last day whose outcome is fully known: today - horizon -
    silence_days + 1, so that a churn starting on its last horizon day is confirmed by today.
    Training examples are the usable days strictly before it, so an evaluation device could also
    train without its evaluation outcome leaking into the training labels.
    """
    res = device_features(events, first_day, today)
    active = activity_from_daily(res.daily, activity)
    labels = survival_labels(active, horizon=horizon, silence_days=silence_days)
    D = len(res.days)
    ev = D - 1 - (horizon + silence_days - 1)
    eval_day = ev if ev >= 0 and bool(labels.usable[ev]) else None
    usable = labels.usable.copy()
    usable[max(ev, 0) :] = False
    return DeviceData(
        features=res.features, time=labels.time, event=labels.event, usable=usable, eval_day=eval_day
    )
