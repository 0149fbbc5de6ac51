"""Events -> daily aggregates -> features for one device, the path a phone runs end to end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedchurn.client.aggregates import daily_aggregates, history_days
from fedchurn.client.features import extract_features


@dataclass(frozen=True)
class DeviceFeatures:
    days: np.ndarray  # (D,) local day numbers
    daily: np.ndarray  # (D, N_CHANNELS) float64
    features: np.ndarray  # (D, N_FEATURES) float32
    first_day: int


def device_features(
    events: np.ndarray, first_day: int | None = None, today: int | None = None
) -> DeviceFeatures:
    start, end = history_days(events, first_day, today)
    daily = daily_aggregates(events, start, end)
    days = np.arange(start, end + 1, dtype=np.int64)
    return DeviceFeatures(
        days=days, daily=daily, features=extract_features(daily, days, start), first_day=start
    )
