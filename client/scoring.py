"""On-device scoring with numpy alone: survival curve, churn probability, 0–100 score, tier."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np

from fedchurn.client.pipeline import device_features
from fedchurn.shared.events import local_day
from fedchurn.shared.model_format import DEFAULT_SPEC, HIGH_RISK, MEDIUM_RISK, ModelSpec, hazards, survival

TIERS = ("low", "medium", "high")


def score_features(
    params: np.ndarray,
    x: np.ndarray,
    high: float = HIGH_RISK,
    medium: float = MEDIUM_RISK,
    spec: ModelSpec = DEFAULT_SPEC,
) -> dict[str, Any]:
    s = survival(hazards(params, x, spec))
    prob = float(1.0 - s[-1])
    t = 2 if prob >= high else 1 if prob >= medium else 0
    return {
        "probability": prob,
        "score": round(100 * prob),
        "tier": TIERS[t],
        "survival": [float(v) for v in s],
    }


def score_device(
    params: np.ndarray,
    events: np.ndarray,
    high: float = HIGH_RISK,
    medium: float = MEDIUM_RISK,
    spec: ModelSpec = DEFAULT_SPEC,
    as_of: int | None = None,
) -> dict[str, Any] | None:
    """Score a device as of local day `as_of` (default: its last day of history) from its events up
    to that day: a user silent since scores on the silence. None when its history starts later."""
    first = int(local_day(events["ts"], events["tz_min"]).min())
    if as_of is not None and as_of < first:
        return None
    res = device_features(events, today=as_of)
    out = score_features(params, res.features[-1], high, medium, spec)
    out["date"] = (date(1970, 1, 1) + timedelta(days=int(res.days[-1]))).isoformat()
    return out
