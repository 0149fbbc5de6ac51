"""A device's share of the population feature mean, and training on centred features.

With `centre-features` the server first measures the mean of the scaled features (features /
INPUT_SCALE) through the secure sum: each device uploads its own mean, clipped, plus a count of
one. Training then runs on features minus that mean, which conditions the first layer far better
than raw features whose means are far from zero (decision 66)."""

from __future__ import annotations

import numpy as np

from fedchurn.shared.feature_spec import BASE_FEATURES
from fedchurn.shared.model_format import INPUT_SCALE
from fedchurn.shared.run_config import STATS_BOUND


def feature_summary(x: np.ndarray, n_features: int = BASE_FEATURES) -> np.ndarray:
    """[mean of x / INPUT_SCALE clipped to +-STATS_BOUND ..., 1] over the model's `n_features`
    inputs; all zeros for a device with no rows."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, n_features)
    out = np.zeros(n_features + 1)
    if len(x):
        out[:n_features] = np.clip((x / INPUT_SCALE[:n_features]).mean(axis=0), -STATS_BOUND, STATS_BOUND)
        out[n_features] = 1.0
    return out


def mean_from_sum(total: np.ndarray) -> np.ndarray | None:
    """The population mean from summed summaries; None when no device contributed."""
    total = np.asarray(total, dtype=np.float64)
    count = total[-1]
    return None if count < 0.5 else total[:-1] / count


def centre_rows(x: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Raw feature rows shifted so that (x / INPUT_SCALE) loses the offset (a scaled-space mean)."""
    x = np.asarray(x, dtype=np.float32)
    return (x - np.asarray(offset, dtype=np.float32) * INPUT_SCALE[: x.shape[-1]]).astype(np.float32)
