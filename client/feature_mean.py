"""A device's share of the population feature mean, and training on centred features.

With `centre-features` the server first measures the mean of the scaled features (features /
INPUT_SCALE) through the secure sum: each device uploads its own mean, clipped, plus a count of
one. Training then runs on features minus that mean, which conditions the first layer far better
than raw features whose means are far from zero (decision 66)."""

from __future__ import annotations

import numpy as np

from fedchurn.shared.feature_spec import N_FEATURES
from fedchurn.shared.model_format import INPUT_SCALE
from fedchurn.shared.run_config import STATS_BOUND


def feature_summary(x: np.ndarray) -> np.ndarray:
    """[mean of x / INPUT_SCALE clipped to +-STATS_BOUND ..., 1]; all zeros for a device with no rows."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, N_FEATURES)
    out = np.zeros(N_FEATURES + 1)
    if len(x):
        out[:N_FEATURES] = np.clip((x / INPUT_SCALE).mean(axis=0), -STATS_BOUND, STATS_BOUND)
        out[N_FEATURES] = 1.0
    return out


def mean_from_sum(total: np.ndarray) -> np.ndarray | None:
    """The population mean from summed summaries; None when no device contributed."""
    total = np.asarray(total, dtype=np.float64)
    count = total[N_FEATURES]
    return None if count < 0.5 else total[:N_FEATURES] / count


def centre_rows(x: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Raw feature rows shifted so that (x / INPUT_SCALE) loses the offset (a scaled-space mean)."""
    return (np.asarray(x, dtype=np.float32) - np.asarray(offset, dtype=np.float32) * INPUT_SCALE).astype(
        np.float32
    )
